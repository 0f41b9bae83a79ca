"""TensorBoard event files in `RUN_DIR/tensorboard/`: the numeric values of every record, by step."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer


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
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir))

    def on_log(self, trainer: Trainer, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._writer.add_scalar(tag(key), value, step)

    def on_train_end(self, trainer: Trainer) -> None:
        self._writer.flush()
        self._writer.close()
