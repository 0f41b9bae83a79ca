"""Where every file of a curate run lives, and how files are written so that a killed process never
leaves a half-written file under a final name.

    OUTPUT/part-00000.jsonl          kept documents of input file 0
    OUTPUT/rejects/part-00000.jsonl  removed documents and malformed lines, with stage and reason
    OUTPUT/stats/part-00000.json     counts per stage and reason (what curate-report reads)
    OUTPUT/curate.json               written last: the run is complete
    OUTPUT/_work/plan.json           inputs, resolved config and fingerprint of the run
    OUTPUT/_work/<step>/...          intermediate files of each step
    OUTPUT/_work/<step>/done/<unit>.json  completion marker of one unit (part or band task) of a step

A unit writes each file to a hidden temporary name, fsyncs and renames it; its marker is written last.
A unit without a marker is redone from scratch, and a step only reads the files of completed units.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

WORK = "_work"
SUMMARY = "curate.json"
TMP_MARK = ".tmp-"


@contextmanager
def atomic_file(path: Path, mode: str = "wb", buffering: int = 1 << 20) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path`; on success fsync and rename it to `path`, else delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, mode, buffering=buffering) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(data, handle, indent=1, sort_keys=True)
        handle.write("\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_array(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as handle:
        np.save(handle, array, allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def remove_stale_temporaries(directory: Path) -> int:
    """Delete temporary files left by killed writers directly inside `directory`."""
    removed = 0
    if directory.is_dir():
        for path in directory.iterdir():
            if path.name.startswith(".") and TMP_MARK in path.name and path.is_file():
                path.unlink(missing_ok=True)
                removed += 1
    return removed


class Layout:
    def __init__(self, output: Path | str, n_parts: int) -> None:
        self.output = Path(output)
        self.work = self.output / WORK
        self.n_parts = n_parts
        self.width = max(5, len(str(max(n_parts - 1, 0))))

    # run-level files
    @property
    def plan_file(self) -> Path:
        return self.work / "plan.json"

    @property
    def summary_file(self) -> Path:
        return self.output / SUMMARY

    def part(self, index: int) -> str:
        return f"part-{index:0{self.width}d}"

    # markers
    def step_dir(self, step: str) -> Path:
        return self.work / step

    def marker(self, step: str, unit: str) -> Path:
        return self.step_dir(step) / "done" / f"{unit}.json"

    def is_done(self, step: str, unit: str) -> bool:
        return self.marker(step, unit).is_file()

    def mark_done(self, step: str, unit: str, info: dict) -> None:
        write_json(self.marker(step, unit), info)

    def marker_info(self, step: str, unit: str) -> dict:
        return read_json(self.marker(step, unit))

    # map steps
    def docs(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "docs" / f"{self.part(part)}.tsv"

    def offsets(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "docs" / f"{self.part(part)}.offsets.npy"

    def ids(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "keys" / f"{self.part(part)}.ids.npy"

    def keys(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "keys" / f"{self.part(part)}.keys.npy"

    def step_rejects(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "rejects" / f"{self.part(part)}.jsonl"

    def step_stats(self, step: str, part: int) -> Path:
        return self.step_dir(step) / "stats" / f"{self.part(part)}.json"

    # dedup steps
    def edges(self, step: str, unit: str) -> Path:
        return self.step_dir(step) / f"{unit}.edges.npy"

    def removals(self, step: str, part: int) -> Path:
        return self.step_dir(step) / f"{self.part(part)}.removed.npy"

    # final outputs
    def output_file(self, part: int) -> Path:
        return self.output / f"{self.part(part)}.jsonl"

    def rejects_file(self, part: int) -> Path:
        return self.output / "rejects" / f"{self.part(part)}.jsonl"

    def stats_file(self, part: int) -> Path:
        return self.output / "stats" / f"{self.part(part)}.json"
