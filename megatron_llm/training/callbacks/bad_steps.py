"""Stop a run whose steps keep failing: too many non-finite losses or gradient norms in a row."""

from __future__ import annotations

from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.exit_codes import TrainingAborted

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


class BadStepGuard(Callback):
    """Counts skipped (non-finite) steps and aborts after `max_in_a_row` of them in a row (0: never)."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.in_a_row = self.in_a_row + 1 if result.skipped else 0
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise TrainingAborted(
                f"stopping at step {trainer.state.step}: {self.in_a_row} steps in a row had a non-finite loss or "
                f"gradient norm (last loss {result.loss}, grad norm {result.grad_norm}); limit "
                f"schedule.max_skipped_in_a_row={self.max_in_a_row}. Lower the learning rate or resume from an "
                "earlier checkpoint."
            )
