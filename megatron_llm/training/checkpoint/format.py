"""The on-disk checkpoint layout (Megatron-LM's), its metadata file, and integrity checks.

Pure file-system code with no torch.distributed: `checkpoint ls/verify`, the mirror and the save/load
path all share it.

```
ROOT/latest_checkpointed_iteration.txt   the step; written last, atomically
ROOT/iter_0000020/                       megatron-core dist_checkpointing (torch_dist) + megatron_llm.json
```
A checkpoint directory is complete when `megatron_llm.json` exists (it is written after every rank's
files are on disk and hashed) and every file it lists has the recorded size and checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from megatron_llm.errors import UsageError

TRACKER = "latest_checkpointed_iteration.txt"
METADATA = "megatron_llm.json"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
_CHUNK = 8 << 20


class CheckpointError(UsageError):
    """A checkpoint that is missing, incomplete or corrupted; the message names the file."""


def iter_dir(root: Path, step: int) -> Path:
    return Path(root) / f"iter_{step:07d}"


def step_of(path: Path) -> int | None:
    match = _ITER_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file, fsync and rename, so readers see the old or the new content only."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_tracker(root: Path) -> int | None:
    tracker = Path(root) / TRACKER
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return 0
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{tracker}: expected a step number, found {text!r}") from None


def write_tracker(root: Path, step: int) -> None:
    atomic_write_text(Path(root) / TRACKER, f"{step}\n")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def describe_files(directory: Path, names: list[str]) -> dict[str, dict]:
    """{name: {"size", "sha256"}} for files of `directory`."""
    return {name: {"size": (directory / name).stat().st_size, "sha256": file_digest(directory / name)}
            for name in names}


def rank_files(directory: Path, rank: int) -> list[str]:
    """The shard files torch_dist wrote for global rank `rank` (`__{rank}_{i}.distcp`)."""
    return sorted(p.name for p in Path(directory).glob(f"__{rank}_*.distcp"))


def shared_files(directory: Path) -> list[str]:
    """Files not written per rank (megatron-core's metadata and common state)."""
    return sorted(p.name for p in Path(directory).iterdir()
                  if p.is_file() and not p.name.endswith(".distcp") and p.name != METADATA
                  and not (p.name.startswith(".") and ".tmp" in p.name))


def read_metadata(directory: Path) -> dict:
    path = Path(directory) / METADATA
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint is incomplete: its save did not finish)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None


def write_metadata(directory: Path, metadata: dict) -> None:
    atomic_write_text(Path(directory) / METADATA, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def check_file(directory: Path, name: str, expected: dict, deep: bool) -> str | None:
    """A problem with one listed file, or None; `deep` also compares the checksum."""
    path = Path(directory) / name
    if not path.is_file():
        return f"{path}: missing"
    size = path.stat().st_size
    if size != expected["size"]:
        return f"{path}: size {size} bytes, expected {expected['size']} (truncated or overwritten)"
    if deep and expected.get("sha256") and file_digest(path) != expected["sha256"]:
        return f"{path}: checksum mismatch (corrupted)"
    return None


def verify_directory(directory: Path, deep: bool = True, names: list[str] | None = None) -> list[str]:
    """Problems found in a checkpoint directory (empty when it is complete and intact).

    `names` restricts the checksum pass to some files (ranks split the work at load time).
    """
    directory = Path(directory)
    try:
        metadata = read_metadata(directory)
    except CheckpointError as exc:
        return [str(exc)]
    files = metadata.get("files", {})
    if not files:
        return [f"{directory / METADATA}: lists no files"]
    problems = []
    for name, expected in sorted(files.items()):
        problem = check_file(directory, name, expected, deep and (names is None or name in names))
        if problem:
            problems.append(problem)
    return problems


@dataclass
class CheckpointEntry:
    """One `iter_*` directory as `checkpoint ls` shows it."""

    step: int
    path: Path
    complete: bool
    size_bytes: int
    layout: dict | None
    contents: list
    consumed_samples: int | None
    latest: bool


def directory_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def list_checkpoints(root: Path) -> list[CheckpointEntry]:
    """Every `iter_*` directory under `root`, oldest first (size checks only; no hashing)."""
    root = Path(root)
    if not root.is_dir():
        return []
    latest = read_tracker(root)
    entries = []
    for path in sorted(root.iterdir()):
        step = step_of(path)
        if step is None or not path.is_dir():
            continue
        problems = verify_directory(path, deep=False)
        metadata = {} if problems and not (path / METADATA).is_file() else _safe_metadata(path)
        entries.append(CheckpointEntry(
            step=step, path=path, complete=not problems, size_bytes=directory_size(path),
            layout=metadata.get("layout"), contents=metadata.get("contents", []),
            consumed_samples=metadata.get("consumed_samples"), latest=step == latest,
        ))
    return sorted(entries, key=lambda e: e.step)


def _safe_metadata(path: Path) -> dict:
    try:
        return read_metadata(path)
    except CheckpointError:
        return {}


def complete_steps(root: Path) -> list[int]:
    """Steps with a complete (size-checked) checkpoint at or below the tracker, newest first."""
    latest = read_tracker(root)
    if latest is None:
        return []
    return sorted((e.step for e in list_checkpoints(root) if e.complete and e.step <= latest), reverse=True)


def resolve_checkpoint(path: Path, iteration: int | None = None) -> Path:
    """An `iter_*` directory from a checkpoint root (its tracker, or `iteration`) or the directory itself."""
    path = Path(path)
    if (path / METADATA).is_file() or step_of(path) is not None:
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint directory")
        return path
    if iteration is None:
        iteration = read_tracker(path)
        if iteration is None:
            raise CheckpointError(f"{path}: no {TRACKER} (not a checkpoint root, or no checkpoint finished)")
    directory = iter_dir(path, iteration)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    return directory
