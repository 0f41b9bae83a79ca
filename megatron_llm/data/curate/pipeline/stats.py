"""Per-input-file counts: what came in, what each stage removed and why, what was kept."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

MAX_EXAMPLES = 100


@dataclass
class PartStats:
    part: str
    input: str
    records: int = 0  # input lines/rows read (map-0 only)
    input_bytes: int = 0
    docs_in: int = 0
    docs_out: int = 0
    malformed: Counter = field(default_factory=Counter)
    malformed_examples: list[str] = field(default_factory=list)
    removed: dict[str, Counter] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)

    def remove(self, stage: str, reason: str) -> None:
        self.removed.setdefault(stage, Counter())[reason] += 1

    def malformed_line(self, reason: str, example: str) -> None:
        self.malformed[reason] += 1
        if len(self.malformed_examples) < MAX_EXAMPLES:
            self.malformed_examples.append(example)

    def add_counters(self, stage: str, counts: Mapping[str, int]) -> None:
        merged = Counter(self.counters.get(stage, {}))
        merged.update(counts)
        self.counters[stage] = dict(merged)

    def to_dict(self) -> dict:
        return {
            "part": self.part,
            "input": self.input,
            "records": self.records,
            "input_bytes": self.input_bytes,
            "docs_in": self.docs_in,
            "docs_out": self.docs_out,
            "malformed": dict(self.malformed),
            "malformed_examples": self.malformed_examples,
            "removed": {stage: dict(reasons) for stage, reasons in self.removed.items()},
            "counters": self.counters,
        }


def merge_part_stats(steps: list[dict]) -> dict:
    """One file's stats over all its map steps (in order): `kept` is what the last step wrote."""
    first, last = steps[0], steps[-1]
    removed: dict[str, Counter] = {}
    counters: dict[str, Counter] = {}
    for step in steps:
        for stage, reasons in step["removed"].items():
            removed.setdefault(stage, Counter()).update(reasons)
        for stage, counts in step["counters"].items():
            counters.setdefault(stage, Counter()).update(counts)
    return {
        "part": first["part"],
        "input": first["input"],
        "records": first["records"],
        "input_bytes": first["input_bytes"],
        "malformed": first["malformed"],
        "malformed_examples": first["malformed_examples"],
        "documents": first["docs_in"],
        "removed": {stage: dict(reasons) for stage, reasons in removed.items()},
        "kept": last["docs_out"],
        "counters": {stage: dict(counts) for stage, counts in counters.items()},
    }
