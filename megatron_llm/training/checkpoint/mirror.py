"""Replicate committed checkpoints to durable storage (s3://, gs:// or a directory) in the background.

Each committed checkpoint is uploaded (files in parallel, large ones in parts), read back and checked against
the checksums in its `megatron_llm.json`, and only then recorded in the mirror's tracker; the mirror is then
pruned with the same retention as the local root. A copy interrupted at any point (a killed trainer, a
network error) is never named by the tracker. Errors are reported once per checkpoint and never stop training.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from pathlib import Path

from megatron_llm.training.checkpoint.format import directory_size
from megatron_llm.training.checkpoint.remote_store import Store


class Mirror:
    """A background uploader to `location`; `submit` queues a committed checkpoint directory."""

    def __init__(self, location: str | os.PathLike, keep_last: int | None = None, keep_every: int | None = None,
                 workers: int = 8) -> None:
        self.store = Store(location, workers=workers)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.errors: list[str] = []
        self.copied: list[str] = []
        self.seconds: list[tuple[int, float, float]] = []  # (bytes, upload seconds, verify seconds) per copy
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self._thread.start()

    @property
    def location(self) -> str:
        return self.store.location

    def submit(self, directory: Path) -> None:
        self._queue.put(Path(directory))

    def close(self) -> None:
        """Wait until every submitted checkpoint is mirrored (or failed)."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (directory := self._queue.get()) is not None:
            try:
                self.copied.append(self.copy(directory))
            except Exception as exc:  # noqa: BLE001 - any storage error is reported, never fatal to training
                self.errors.append(f"mirroring {directory}: {exc}")
                print(f"warning: mirroring {directory} to {self.location} failed: {exc}", file=sys.stderr,
                      flush=True)

    def copy(self, directory: Path) -> str:
        """Upload, read back and verify, then record in the tracker and prune. Returns the copy's URL."""
        start = time.perf_counter()
        step = self.store.upload(directory)
        uploaded = time.perf_counter()
        problems = self.store.problems(step, deep=True)
        if problems:
            self.store.remove(step)
            raise RuntimeError(f"copy failed verification: {problems[0]}")
        self.seconds.append((directory_size(directory), uploaded - start, time.perf_counter() - uploaded))
        latest = self.store.read_tracker()
        if latest is None or step >= latest:
            self.store.write_tracker(step)
        self.store.prune(self.keep_last, self.keep_every)
        return self.store.url(Path(directory).name)

    def is_mirrored(self, step: int) -> bool:
        """Whether the tracker covers `step` and its copy is complete (sizes checked, no hashing)."""
        latest = self.store.read_tracker()
        return latest is not None and step <= latest and not self.store.problems(step, deep=False)
