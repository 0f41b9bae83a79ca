"""The stages of a staged run (`schedule.stages`): each a mapping in the YAML, checked here so that a bad
stage is a configuration error naming `schedule.stages[i].field` before any process starts."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError

SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant", "inverse_sqrt": "inverse-square-root"}


@dataclass
class Stage:
    """One stage of `schedule.stages` (a mapping in the YAML with these keys)."""

    name: str
    start_step: int | None = None
    start_tokens: int | None = None
    paths: list = field(default_factory=list)
    lr_schedule: str = "constant"
    lr: float | None = None
    min_lr: float | None = None
    warmup_iters: int = 0


def parse_stages(config: Config) -> list[Stage]:
    """The stages of the config, checked; errors name `schedule.stages[i].field`."""
    stages = []
    known = {f.name for f in dataclasses.fields(Stage)}
    for index, raw in enumerate(config.schedule.stages):
        where = f"schedule.stages[{index}]"
        if not isinstance(raw, dict):
            raise UsageError(f"{where} must be a mapping with {', '.join(sorted(known))}")
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(known))})")
        if "name" not in raw:
            raise UsageError(f"{where}.name is required")
        stage = Stage(**raw)
        if stage.lr_schedule not in SCHEDULES:
            raise UsageError(f"{where}.lr_schedule must be one of {', '.join(SCHEDULES)}, got {stage.lr_schedule!r}")
        if index == 0 and (stage.start_step or stage.start_tokens):
            raise UsageError(f"{where}: the first stage starts at step 0 (leave start_step/start_tokens out)")
        if index > 0 and (stage.start_step is None) == (stage.start_tokens is None):
            raise UsageError(f"{where}: set exactly one of start_step and start_tokens")
        if not stage.paths:
            raise UsageError(f"{where}.paths: the stage's data blend is empty")
        stages.append(stage)
    return stages


