"""Looking at a run directory without TensorBoard: `megatron-llm runs show`."""
