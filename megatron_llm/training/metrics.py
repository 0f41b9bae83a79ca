"""Metrics beyond the step's own: recorded on any rank during a step, reduced over ranks when logged."""

from __future__ import annotations

import os
from typing import Literal

import psutil
import torch

Reduce = Literal["mean", "sum", "max", "min"]


def memory_bytes() -> int:
    """Peak GPU memory allocated on CUDA machines, resident set size of this process on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    return int(psutil.Process(os.getpid()).memory_info().rss)


class MetricBuffer:
    """Accumulates `record(name, value, reduce, count)` between logs.

    "mean" divides the sum of values by the sum of counts over every step and rank since the last log (a
    value may be a sum over `count` items, e.g. correct answers over pairs); "sum", "max" and "min" reduce
    the values themselves. Ranks may record different names (only some ranks see the loss).
    """

    def __init__(self) -> None:
        self._values: dict[str, list] = {}

    def record(self, name: str, value: float, reduce: Reduce = "mean", count: float = 1.0) -> None:
        entry = self._values.get(name)
        if entry is None:
            self._values[name] = [reduce, float(value), float(count)]
            return
        if entry[0] != reduce:
            raise ValueError(f"metric {name!r} recorded with reduce {reduce!r} and {entry[0]!r}")
        if reduce in ("mean", "sum"):
            entry[1] += float(value)
            entry[2] += float(count)
        else:
            entry[1] = (max if reduce == "max" else min)(entry[1], float(value))

    def reduce(self) -> dict[str, float]:
        """The reduced values over every rank, then empty (a collective: every rank calls it)."""
        gathered: list = [self._values]
        if torch.distributed.get_world_size() > 1:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self._values)
        self._values = {}
        merged: dict[str, list] = {}
        for part in gathered:
            for name, (reduce, value, count) in part.items():
                if name not in merged:
                    merged[name] = [reduce, value, count]
                elif reduce in ("mean", "sum"):
                    merged[name][1] += value
                    merged[name][2] += count
                else:
                    merged[name][1] = (max if reduce == "max" else min)(merged[name][1], value)
        return {name: value / max(count, 1e-30) if reduce == "mean" else value
                for name, (reduce, value, count) in sorted(merged.items())}

    def __bool__(self) -> bool:
        return bool(self._values)
