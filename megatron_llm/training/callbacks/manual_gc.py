"""Python's garbage collector under the run's control (`schedule.manual_gc_interval`), as the H100 recipe runs it.

The automatic collector starts a full collection whenever allocation counts cross its thresholds, on each rank
at a different moment; a rank paused in a long collection holds every other rank at the next collective. Here
automatic collection is off for the run and every rank collects at the same steps, so the pauses line up.
Objects freed by reference counting (nearly all tensors) are freed at once either way; only reference cycles
wait for the next collection.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


class ManualGC(Callback):
    """Disable automatic collection at the start, collect every `interval` steps, restore it at the end."""

    def __init__(self, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"schedule.manual_gc_interval must be >= 1, got {interval}")
        self.interval = interval
        self._was_enabled = gc.isenabled()

    def on_train_start(self, trainer: Trainer) -> None:
        self._was_enabled = gc.isenabled()
        gc.disable()
        gc.collect()

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if trainer.state.step % self.interval == 0:
            gc.collect()

    def on_train_end(self, trainer: Trainer) -> None:
        if self._was_enabled:
            gc.enable()
