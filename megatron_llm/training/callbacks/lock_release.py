"""Holds the run directory's lock (taken by `setup.build_trainer` before anything is written) and releases
it when training ends, whichever way; a killed process leaves a lock the next run detects as stale."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from megatron_llm.runtime.run_lock import RunLock
from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer

LOCK_NAME = "megatron_llm.lock"


def acquire_run_lock(run_dir: Path) -> RunLock | None:
    """Rank 0 takes `RUN_DIR/megatron_llm.lock`; every rank raises the same RunLockHeld if it cannot."""
    lock, problem = None, None
    if torch.distributed.get_rank() == 0:
        lock = RunLock(Path(run_dir) / LOCK_NAME, "training run")
        try:
            lock.acquire()
        except Exception as exc:  # RunLockHeld, or a directory we cannot write: every rank must hear it
            problem = (type(exc), str(exc))
    shared = [problem]
    if torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        error_type, message = shared[0]
        raise error_type(message)
    return lock


class RunLockRelease(Callback):
    """Releases the run directory's lock at the end of training (rank 0 holds it)."""

    def __init__(self, lock: RunLock | None) -> None:
        self.lock = lock

    def on_train_end(self, trainer: Trainer) -> None:
        if self.lock is not None:
            self.lock.release()
