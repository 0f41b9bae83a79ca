"""Checkpoint roots on any fsspec file system: s3://bucket/prefix (s3fs), gs://bucket/prefix (gcsfs) or a path.

The layout is the local one (`format.py`): `ROOT/iter_NNNNNNN/` plus `ROOT/latest_checkpointed_iteration.txt`.
An object store has no rename, so a copy is complete when its `megatron_llm.json` exists (uploaded last) and
every file it lists has the recorded size; the tracker is written only after a copy was read back and its
checksums matched. Credentials and endpoints come from the file system's usual sources (AWS_* variables and
`~/.aws`, AWS_ENDPOINT_URL for S3-compatible stores, Google application credentials).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from megatron_llm.errors import UsageError
from megatron_llm.training.checkpoint.format import (
    METADATA,
    TRACKER,
    CheckpointError,
    step_of,
    verify_directory,
    write_tracker,
)
from megatron_llm.training.checkpoint.retention import steps_to_keep

_EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}
_CHUNK = 8 << 20


def is_remote(location: str | os.PathLike | None) -> bool:
    """True for a URL with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    return location is not None and "://" in str(location) and not str(location).startswith("file://")


class Store:
    """A checkpoint root on an fsspec file system: list, verify, upload, download and prune copies."""

    def __init__(self, location: str | os.PathLike, workers: int = 8) -> None:
        import fsspec

        self.location = str(location)
        self.workers = workers
        scheme = self.location.split("://", 1)[0] if "://" in self.location else "file"
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.location)
        except ImportError as exc:
            extra = _EXTRAS.get(scheme, scheme)
            raise UsageError(f"checkpoint.mirror={self.location}: the {scheme}:// file system is not installed "
                             f"(pip install 'megatron-llm[{extra}]'): {exc}") from None
        self.root = self.root.rstrip("/")
        self.local = not is_remote(self.location)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def url(self, *parts: str) -> str:
        """A full location (with scheme) for messages and `--resume-from`."""
        return self.location.rstrip("/") + "".join("/" + p for p in parts)

    def read_tracker(self) -> int | None:
        try:
            text = self.fs.cat_file(self.path(TRACKER)).decode().strip()
        except FileNotFoundError:
            return None
        try:
            return int(text)
        except ValueError:
            raise CheckpointError(f"{self.url(TRACKER)}: expected a step number, found {text!r}") from None

    def write_tracker(self, step: int) -> None:
        if self.local:
            write_tracker(Path(self.root), step)
        else:
            self.fs.pipe_file(self.path(TRACKER), f"{step}\n".encode())

    def steps(self) -> list[int]:
        """Steps of every `iter_*` entry, complete or not, oldest first."""
        self.fs.invalidate_cache()  # another process (or an earlier run) may have written since the last listing
        try:
            entries = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        return sorted(s for s in (step_of(Path(str(e).rstrip("/"))) for e in entries) if s is not None)

    def metadata(self, step: int) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path(_iter_name(step), METADATA)))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            return None

    def problems(self, step: int, deep: bool) -> list[str]:
        """What is wrong with the copy of `step`: missing metadata, sizes, and with `deep` the checksums."""
        metadata = self.metadata(step)
        name = _iter_name(step)
        if metadata is None or not metadata.get("files"):
            return [f"{self.url(name, METADATA)}: missing or unreadable (the copy is incomplete)"]
        files = metadata["files"]
        self.fs.invalidate_cache(self.path(name))
        try:
            sizes = {Path(str(e["name"])).name: e["size"]
                     for e in self.fs.ls(self.path(name), detail=True) if e.get("type") != "directory"}
        except FileNotFoundError:
            sizes = {}
        problems = []
        for file, expected in sorted(files.items()):
            if file not in sizes:
                problems.append(f"{self.url(name, file)}: missing")
            elif sizes[file] != expected["size"]:
                problems.append(f"{self.url(name, file)}: size {sizes[file]} bytes, expected {expected['size']}")
        if problems or not deep:
            return problems
        with ThreadPoolExecutor(self.workers) as pool:
            digests = dict(zip(sorted(files), pool.map(lambda f: self._digest(self.path(name, f)), sorted(files))))
        return [f"{self.url(name, f)}: checksum mismatch (corrupted)" for f in sorted(files)
                if files[f].get("sha256") and digests[f] != files[f]["sha256"]]

    def _digest(self, path: str) -> str:
        h = hashlib.sha256()
        with self.fs.open(path, "rb", block_size=_CHUNK) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        return h.hexdigest()

    def complete_steps(self) -> list[int]:
        """Steps at or below the tracker whose copy is complete (sizes checked), newest first."""
        latest = self.read_tracker()
        if latest is None:
            return []
        return [s for s in reversed(self.steps()) if s <= latest and not self.problems(s, deep=False)]

    def remove(self, step: int) -> None:
        try:
            self.fs.rm(self.path(_iter_name(step)), recursive=True)
        except FileNotFoundError:
            pass

    def upload(self, directory: Path) -> int:
        """Copy a committed local checkpoint: data files in parallel (s3fs/gcsfs upload large ones in parts),
        then `megatron_llm.json` last. Returns the step. Anything already at the target is removed first."""
        directory = Path(directory)
        step = step_of(directory)
        if step is None:
            raise CheckpointError(f"{directory}: not an iter_* checkpoint directory")
        files = sorted(json.loads((directory / METADATA).read_text())["files"])
        self.remove(step)
        target = self.path(directory.name)
        if self.local:  # object stores have no directories (s3fs would only check that the bucket exists)
            self.fs.makedirs(target, exist_ok=True)
        with ThreadPoolExecutor(self.workers) as pool:
            for _ in pool.map(lambda f: self._put(directory / f, f"{target}/{f}"), files):
                _fault_point(step)
        self.fs.put_file(str(directory / METADATA), f"{target}/{METADATA}")
        return step

    def _put(self, local: Path, remote: str) -> None:
        self.fs.put_file(str(local), remote)

    def download(self, step: int, destination: Path) -> Path:
        """The copy of `step` into `destination/iter_N` (replacing what is there), verified locally."""
        name = _iter_name(step)
        metadata = self.metadata(step)
        if metadata is None:
            raise CheckpointError(f"{self.url(name, METADATA)}: missing (the copy is incomplete)")
        local = Path(destination) / name
        partial = Path(destination) / f".{name}.download"
        _remove_local(partial)
        partial.mkdir(parents=True)
        files = sorted(metadata["files"]) + [METADATA]
        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(lambda f: self.fs.get_file(self.path(name, f), str(partial / f)), files))
        problems = verify_directory(partial, deep=True)
        if problems:
            _remove_local(partial)
            raise CheckpointError(f"download of {self.url(name)} failed verification: {problems[0]}")
        _remove_local(local)
        partial.rename(local)
        return local

    def prune(self, keep_last: int | None, keep_every: int | None) -> list[int]:
        """Remove copies retention does not keep and incomplete ones older than the tracker; returns steps."""
        latest = self.read_tracker()
        if latest is None:
            return []
        steps = self.steps()
        complete = [s for s in steps if s <= latest and self.metadata(s) is not None]
        keep = steps_to_keep(complete, latest, keep_last, keep_every)
        removed = [s for s in steps if s not in keep and s < latest]
        for step in removed:
            self.remove(step)
        return removed


def _iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def _remove_local(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _fault_point(step: int) -> None:
    """Test-only: `MEGATRON_LLM_FAULT=kill_during_mirror_step<N>` SIGKILLs the process once one data file of
    step N's copy is uploaded, before the copy is complete (the trainer dies mid-upload)."""
    if f"kill_during_mirror_step{step}" in os.environ.get("MEGATRON_LLM_FAULT", "").split(","):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fetch(location: str, destination: Path, step: int | None = None) -> Path:
    """Download a checkpoint from `location` (a root, or a root's `iter_*` URL) into `destination`:
    the given step, else the newest complete copy that passes verification. Returns the local directory."""
    leaf = location.rstrip("/").rsplit("/", 1)[-1]
    if step is None and step_of(Path(leaf)) is not None:
        location, step = location.rstrip("/").rsplit("/", 1)[0], step_of(Path(leaf))
    store = Store(location)
    candidates = [step] if step is not None else store.complete_steps()
    if not candidates:
        raise CheckpointError(f"{location}: no complete checkpoint (no {TRACKER}, or nothing it names is whole)")
    errors = []
    for candidate in candidates:
        try:
            return store.download(candidate, destination)
        except (CheckpointError, OSError) as exc:
            errors.append(str(exc))
    raise CheckpointError(f"{location}: no copy passed verification: {errors[0]}")
