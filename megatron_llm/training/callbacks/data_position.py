"""Where training is in its data and its loss scale, in each logged record (logging rank only).

`samples/<dataset>` and `tokens/<dataset>`: the samples (and tokens) drawn so far from each component of a
blend, counted from megatron's blend index incrementally; `loss_scale`: the fp16 dynamic loss scale.
(`skipped_steps` and `consumed_samples` are part of every step record already.)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer


def component_names(datasets: list) -> list[str]:
    names = [Path(str(getattr(getattr(d, "dataset", None), "path_prefix", i))).name for i, d in enumerate(datasets)]
    return names if len(set(names)) == len(names) else [f"{i}.{n}" for i, n in enumerate(names)]


class DataPosition(Callback):
    def __init__(self) -> None:
        self.counted = 0
        self.counts: np.ndarray | None = None

    def _blend_counts(self, trainer: Trainer, consumed: int) -> dict[str, int]:
        data = trainer.train_data
        index, datasets = getattr(data, "dataset_index", None), getattr(data, "datasets", None)
        if index is None or not datasets:
            return {}
        consumed = min(consumed, len(index))
        if self.counts is None or consumed < self.counted:
            self.counts, self.counted = np.zeros(len(datasets), dtype=np.int64), 0
        self.counts += np.bincount(np.asarray(index[self.counted:consumed]), minlength=len(datasets))
        self.counted = consumed
        return dict(zip(component_names(datasets), self.counts.tolist()))

    def on_step_start(self, trainer: Trainer) -> None:
        step = trainer.state.step + 1  # counted up to the end of this step: its record holds them
        if not trainer.is_logging_rank or (step % trainer.config.logging.log_interval and step != trainer.train_iters):
            return
        s = trainer.config.schedule
        seq = trainer.config.data.seq_length
        for name, samples in self._blend_counts(trainer, trainer.state.consumed_samples + s.global_batch_size).items():
            trainer.record_metric(f"samples/{name}", samples, "max")
            trainer.record_metric(f"tokens/{name}", samples * seq, "max")
        if trainer.config.precision.dtype == "fp16":
            trainer.record_metric("loss_scale", float(trainer.optimizer.get_loss_scale()), "min")
