"""Planning a training run before it starts: memory per GPU, parallel layouts, time and cost.

Pure arithmetic (no torch): `megatron-llm plan` and the trainer's start-up check both use it.
"""

from megatron_llm.planning.memory import MemoryEstimate, estimate_memory, warn_if_not_fitting

__all__ = ["MemoryEstimate", "estimate_memory", "warn_if_not_fitting"]
