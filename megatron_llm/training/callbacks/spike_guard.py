"""On a loss spike, roll back to the last checkpoint and skip the data trained on since."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.checkpoint.checkpointer import say
from megatron_llm.training.exit_codes import TrainingAborted

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


@dataclass
class Spike:
    step: int
    loss: float
    mean: float
    std: float


class SpikeDetector:
    """A loss far above its recent running statistics: > mean + sigma * std over the last `window` steps."""

    def __init__(self, sigma: float, window: int, min_history: int | None = None) -> None:
        self.sigma = sigma
        self.window = window
        self.min_history = min_history or max(window // 2, 2)
        self.losses: deque[float] = deque(maxlen=window)

    def check(self, step: int, loss: float) -> Spike | None:
        if not math.isfinite(loss):
            return None
        if len(self.losses) >= self.min_history:
            mean = sum(self.losses) / len(self.losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / len(self.losses))
            if loss > mean + self.sigma * max(std, 1e-3 * abs(mean)):
                return Spike(step, loss, mean, std)
        self.losses.append(loss)
        return None


class SpikeGuard(Callback):
    """Rolls back on a spike (logged as an event); spikes that persist after `MAX_ROLLBACKS` rollbacks to the
    same checkpoint are not the data's fault, and the run stops."""

    MAX_ROLLBACKS = 3

    def __init__(self, sigma: float, window: int) -> None:
        self.detector = SpikeDetector(sigma, window)
        self.rollbacks: dict[int, int] = {}

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        spike = self.detector.check(trainer.state.step, result.loss)
        if spike is None:
            return
        described = (f"loss spike at step {spike.step} ({spike.loss:.4f}, recent mean {spike.mean:.4f} "
                     f"± {spike.std:.4f})")
        skipped_from = trainer.state.consumed_samples
        restored = trainer.rewind()
        if restored is None:
            say(f"{described}: no checkpoint to roll back to; continuing")
            return
        self.rollbacks[restored] = self.rollbacks.get(restored, 0) + 1
        if self.rollbacks[restored] > self.MAX_ROLLBACKS:
            raise TrainingAborted(f"{described} persists after {self.MAX_ROLLBACKS} rollbacks to step {restored} "
                                  "with fresh data; stopping")
        window = trainer.state.skipped_windows[-1]
        say(f"{described}: rolled back to step {restored} and skipped samples {window[0]}..{window[1] - 1}")
        trainer.log({"step": spike.step, "consumed_samples": skipped_from, "spike_loss": spike.loss,
                     "rollback_to": restored, "skipped_samples": window})
