"""Everything a step needs to know about the run, picklable so worker processes get a copy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_llm.data.curate.config import CurateConfig
from megatron_llm.data.curate.pipeline.docio import split_id
from megatron_llm.data.curate.pipeline.layout import Layout
from megatron_llm.data.curate.pipeline.plan import Step

Progress = Callable[[int], None]


@dataclass
class RunContext:
    config: CurateConfig
    inputs: list[Path]
    layout: Layout
    steps: list[Step]
    plan: dict
    on_error: str = "skip"  # skip: count and report malformed lines; fail: stop with exit code 2
    keep_work: bool = False

    @property
    def fingerprint(self) -> str:
        return self.plan["fingerprint"]

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def source(self, doc_id: int) -> str:
        """`file:line` of a document id."""
        part, line = split_id(doc_id)
        return f"{self.inputs[part]}:{line}"
