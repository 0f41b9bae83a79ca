"""Replicates every committed checkpoint to `checkpoint.mirror` (s3://, gs:// or a directory) in the background
(rank 0). At the start of a run, a latest local checkpoint the mirror lacks (its upload was interrupted) is
uploaded first."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.checkpoint.format import iter_dir, read_tracker
from megatron_llm.training.checkpoint.mirror import Mirror

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer


class MirrorCheckpoints(Callback):
    def __init__(self, location: str, keep_last: int | None, keep_every: int | None) -> None:
        self.settings = (location, keep_last, keep_every)
        self.mirror: Mirror | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self.mirror = Mirror(*self.settings)
        root = trainer.checkpointer.root
        latest = read_tracker(root)
        try:
            missing = latest is not None and not self.mirror.is_mirrored(latest)
        except Exception as exc:  # noqa: BLE001 - an unreachable mirror is reported, never fatal
            print(f"warning: checkpoint mirror {self.mirror.location} unreachable: {exc}", file=sys.stderr,
                  flush=True)
            return
        if missing:
            self.mirror.submit(iter_dir(root, latest))

    def on_checkpoint_saved(self, trainer: Trainer, step: int, path: Path) -> None:
        self.mirror.submit(path)

    def on_train_end(self, trainer: Trainer) -> None:
        self.mirror.close()
