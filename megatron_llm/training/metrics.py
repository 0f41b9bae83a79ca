"""Per-step metrics to `metrics.jsonl` and TensorBoard (same steps, same values), plus rank-0 progress."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import psutil
import torch

STEP_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mfu", "mem_bytes")


def memory_bytes() -> int:
    """Peak GPU memory allocated on CUDA machines, resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(psutil.Process(os.getpid()).memory_info().rss)


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class MetricsWriter:
    """Writes on the logging rank only; other ranks get a writer that does nothing."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self._jsonl = None
        self._tb = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def write(self, record: dict) -> None:
        """`record` holds `step` and numeric values; non-finite values are written as null in JSON."""
        if not self.enabled:
            return
        clean = {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in record.items()}
        self._jsonl.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"train/{key}" if key != "val_loss" else "valid/loss", value, step)

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
