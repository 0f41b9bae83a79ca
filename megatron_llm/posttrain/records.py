"""JSONL records with their line numbers, and a report of the records that could not be used.

Bad records are never dropped silently: each is reported as `file:line: reason` and counted by reason;
with `strict` the first one is an error (exit 2).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_llm.errors import UsageError, located


@dataclass
class DataReport:
    """Records read, used and rejected (with where and why)."""

    path: str
    strict: bool = False
    read: int = 0
    used: int = 0
    problems: list[tuple[int, str]] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    def reject(self, line: int, reason: str, kind: str) -> None:
        if self.strict:
            raise located(self.path, line, reason)
        self.problems.append((line, reason))
        self.reasons[kind] += 1

    @property
    def rejected(self) -> int:
        return len(self.problems)

    def lines(self, limit: int = 20) -> list[str]:
        shown = [f"{self.path}:{line}: {reason}" for line, reason in self.problems[:limit]]
        if self.rejected > limit:
            shown.append(f"... and {self.rejected - limit} more")
        return shown

    def summary(self) -> str:
        text = f"{self.path}: {self.used} of {self.read} records used"
        if self.rejected:
            counts = ", ".join(f"{n} {kind}" for kind, n in sorted(self.reasons.items()))
            text += f", {self.rejected} rejected ({counts})"
        return text

    def print(self, stream=None, limit: int = 20) -> None:
        stream = stream or sys.stderr
        for line in self.lines(limit):
            print(line, file=stream)
        print(self.summary(), file=stream, flush=True)

    def to_dict(self) -> dict:
        return {"path": self.path, "read": self.read, "used": self.used, "rejected": self.rejected,
                "reasons": dict(self.reasons),
                "problems": [{"line": line, "reason": reason} for line, reason in self.problems]}


def read_jsonl(path: str | Path, report: DataReport) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; unparsable lines go to the report."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: data file not found")
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            report.read += 1
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                report.reject(number, f"invalid JSON ({error.msg})", "invalid JSON")
                continue
            if not isinstance(record, dict):
                report.reject(number, "a record must be a JSON object", "not an object")
                continue
            yield number, record
