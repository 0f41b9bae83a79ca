"""The phases of a training run at which a Callback is called, in the order the Trainer calls them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


class Callback:
    """Override the phases you need; every phase is called on every rank (a callback that writes files
    checks `trainer.is_logging_rank`). Callbacks run in the order of the Trainer's list."""

    def on_train_start(self, trainer: Trainer) -> None:
        """After set-up and resume, before the first step."""

    def on_step_start(self, trainer: Trainer) -> None:
        """Before step `trainer.state.step + 1` runs."""

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        """After a step; `trainer.state.step` is its number. Stop with `trainer.request_stop`."""

    def on_log(self, trainer: Trainer, record: dict) -> None:
        """A metrics record (`step` plus values) to write: every `log_interval` steps, validation, events."""

    def on_eval_end(self, trainer: Trainer, val_loss: float) -> None:
        """After a validation pass."""

    def on_checkpoint_written(self, trainer: Trainer, step: int) -> None:
        """A checkpoint's shards are written, before it is committed (hashes, metadata, tracker)."""

    def on_checkpoint_saved(self, trainer: Trainer, step: int, path: Path) -> None:
        """A checkpoint is committed (the tracker names it); every rank."""

    def on_train_end(self, trainer: Trainer) -> None:
        """The loop ended (finished, stopped or failed): flush and release what the callback holds."""
