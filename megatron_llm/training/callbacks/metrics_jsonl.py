"""`RUN_DIR/metrics.jsonl`: one JSON object per record, non-finite values written as null."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class JsonlMetrics(Callback):
    """Appends (a resumed run continues the same file); line-buffered so a killed run keeps its lines."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / "metrics.jsonl"
        self._file = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        clean = {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")

    def on_train_end(self, trainer: Trainer) -> None:
        self._file.close()
