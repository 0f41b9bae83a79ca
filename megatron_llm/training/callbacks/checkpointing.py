"""When to save: every `checkpoint.save_interval` steps, at the last step, and before any requested stop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


class CheckpointSaver(Callback):
    def __init__(self, save_interval: int | None) -> None:
        self.save_interval = save_interval

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        checkpointer, step = trainer.checkpointer, trainer.state.step
        checkpointer.poll()
        last = step >= trainer.train_iters and bool(self.save_interval)
        periodic = bool(self.save_interval) and step % self.save_interval == 0
        if trainer.stop_requested or last or periodic:
            checkpointer.save(trainer, blocking=trainer.stop_requested)

    def on_train_end(self, trainer: Trainer) -> None:
        trainer.checkpointer.close()
