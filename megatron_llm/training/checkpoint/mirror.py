"""A second checkpoint directory on a slower, durable file system, filled in the background.

Each committed checkpoint is copied to `MIRROR/.iter_N.partial`, verified against its checksums, renamed
to `MIRROR/iter_N`, and only then recorded in the mirror's tracker; the mirror is pruned with the same
retention. Copy errors are reported and never stop training.
"""

from __future__ import annotations

import queue
import shutil
import sys
import threading
from pathlib import Path

from megatron_llm.training.checkpoint.format import step_of, verify_directory, write_tracker
from megatron_llm.training.checkpoint.retention import prune


class Mirror:
    def __init__(self, mirror_dir: Path, keep_last: int | None = None, keep_every: int | None = None) -> None:
        self.root = Path(mirror_dir)
        self.keep_last = keep_last
        self.keep_every = keep_every
        self.errors: list[str] = []
        self.copied: list[Path] = []
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="checkpoint-mirror", daemon=True)
        self._thread.start()

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
            except (OSError, RuntimeError) as exc:
                self.errors.append(f"mirroring {directory}: {exc}")
                print(f"warning: mirroring {directory} to {self.root} failed: {exc}", file=sys.stderr, flush=True)

    def copy(self, directory: Path) -> Path:
        step = step_of(directory)
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{directory.name}.partial"
        final = self.root / directory.name
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(directory, partial)
        problems = verify_directory(partial, deep=True)
        if problems:
            shutil.rmtree(partial, ignore_errors=True)
            raise RuntimeError(f"copy failed verification: {problems[0]}")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        write_tracker(self.root, step)
        prune(self.root, self.keep_last, self.keep_every)
        return final
