"""Callbacks: everything around the training step, one file each (checkpointing, metrics writers, guards,
exit policy, progress, fault injection). `default_callbacks` lists the ones a run gets from its config."""

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.callbacks.defaults import default_callbacks

__all__ = ["Callback", "default_callbacks"]
