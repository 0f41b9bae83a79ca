"""megatron-llm: an engine for training large language models from scratch on megatron-core."""

__version__ = "0.1.0"
