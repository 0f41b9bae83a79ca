"""TensorBoard event files in `RUN_DIR/tensorboard/`: the numeric values of every record, by step.

A record is one event holding all its scalars (what `add_scalar` would write as one event each), handed to
the writer's background thread through a queue long enough never to make the training step wait for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer

_QUEUE = 10_000  # events held for the writer thread; torch's default (10) blocks the step when the disk is slow


def tag(key: str) -> str:
    """`train/<key>` for the step's values, `valid/loss`; keys with their own namespace (eval/arc/acc,
    samples/web) keep it."""
    if key == "val_loss":
        return "valid/loss"
    return key if "/" in key else f"train/{key}"


class TensorBoardMetrics(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.log_dir = run_dir / "tensorboard"
        self._writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard.writer import FileWriter

        self._writer = FileWriter(str(self.log_dir), max_queue=_QUEUE)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag(key), simple_value=float(value)) for key, value in record.items()
                  if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)]
        if values:
            self._writer.add_summary(Summary(value=values), record["step"])

    def on_train_end(self, trainer: Trainer) -> None:
        self._writer.flush()
        self._writer.close()
