"""Which checkpoints to keep: the last K complete ones, every M-th step, and always the latest."""

from __future__ import annotations

import shutil
from pathlib import Path

from megatron_llm.training.checkpoint.format import list_checkpoints, read_tracker


def steps_to_keep(complete: list[int], latest: int | None, keep_last: int | None,
                  keep_every: int | None) -> set[int]:
    if not keep_last and not keep_every:
        return set(complete)
    keep = set(sorted(complete)[-keep_last:]) if keep_last else set()
    if keep_every:
        keep |= {s for s in complete if s % keep_every == 0}
    if latest is not None:
        keep.add(latest)
    return keep


def prune(root: Path, keep_last: int | None, keep_every: int | None) -> list[Path]:
    """Delete checkpoints retention does not keep, and partial ones older than the latest; returns them."""
    latest = read_tracker(root)
    if latest is None:
        return []
    entries = list_checkpoints(root)
    keep = steps_to_keep([e.step for e in entries if e.complete and e.step <= latest], latest, keep_last,
                         keep_every)
    removed = []
    for entry in entries:
        if entry.step in keep or entry.step > latest:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed
