"""Staged runs: each stage of `schedule.stages` trains from its start on its own data blend with its own
learning-rate segment (e.g. a web mix at constant LR, then an anneal on a high-quality mix decaying to 0).

A stage starts at a whole step (`start_step`, or `start_tokens` rounded up to a step); everything else
follows from the samples consumed, so a run resumed inside any stage continues exactly:
- `StagedDataset` maps the run's sample index to (stage, index within the stage's blend): stage k's blend
  is read from its own first sample when the run crosses into it;
- `StagedScheduler` is megatron-core's OptimizerParamScheduler whose learning rate at sample n is that of
  the segment containing n, counted from the segment's start.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from pathlib import Path
from typing import Any

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_llm.config.schema import Config
from megatron_llm.config.stage_specs import SCHEDULES, Stage, parse_stages
from megatron_llm.errors import UsageError
from megatron_llm.training.batch_schedule import BatchSchedule


def start_steps(stages: list[Stage], batches: BatchSchedule, seq_length: int) -> list[int]:
    steps = [0]
    for index, stage in enumerate(stages[1:], start=1):
        step = stage.start_step if stage.start_step is not None else \
            batches.steps_for(math.ceil(stage.start_tokens / seq_length))
        if step <= steps[-1]:
            raise UsageError(f"schedule.stages[{index}] starts at step {step}, not after the previous stage "
                             f"(step {steps[-1]})")
        steps.append(step)
    return steps


class StagedDataset:
    """The run's samples: index i is sample i - start(k) of stage k's dataset, stage k holding i."""

    def __init__(self, datasets: list[Any], starts: list[int], names: list[str]) -> None:
        self.datasets = datasets
        self.starts = starts
        self.names = names

    def stage_of(self, index: int) -> int:
        return bisect.bisect_right(self.starts, index) - 1

    def __len__(self) -> int:
        return self.starts[-1] + len(self.datasets[-1])

    def __getitem__(self, index: int) -> dict:
        stage = self.stage_of(index)
        return self.datasets[stage][index - self.starts[stage]]


class StagedScheduler(OptimizerParamScheduler):
    """The learning rate of the segment holding the current sample (weight decay stays the base one)."""

    def __init__(self, optimizer: Any, config: Config, stages: list[Stage], starts: list[int],
                 total_samples: int) -> None:
        o, gbs = config.optim, config.schedule.global_batch_size
        self.starts = starts
        ends = [*starts[1:], total_samples]
        self.segments = []
        for stage, start, end in zip(stages, starts, ends):
            self.segments.append(OptimizerParamScheduler(
                optimizer, init_lr=0.0, max_lr=stage.lr if stage.lr is not None else o.lr,
                min_lr=stage.min_lr if stage.min_lr is not None else o.min_lr,
                lr_warmup_steps=stage.warmup_iters * gbs, lr_decay_steps=max(end - start, stage.warmup_iters * gbs + 1),
                lr_decay_style=SCHEDULES[stage.lr_schedule], start_wd=o.weight_decay, end_wd=o.weight_decay,
                wd_incr_steps=1, wd_incr_style="constant"))
        super().__init__(optimizer, init_lr=0.0, max_lr=max(s.max_lr for s in self.segments),
                         min_lr=min(s.min_lr for s in self.segments), lr_warmup_steps=0,
                         lr_decay_steps=total_samples, lr_decay_style="constant", start_wd=o.weight_decay,
                         end_wd=o.weight_decay, wd_incr_steps=total_samples, wd_incr_style="constant",
                         use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=True)

    def get_lr(self, param_group: dict) -> float:
        """The learning rate for the next step: that of the segment holding its first sample."""
        index = bisect.bisect_right(self.starts, self.num_steps) - 1
        segment = self.segments[index]
        segment.num_steps = self.num_steps - self.starts[index]
        return segment.get_lr({})


def stage_starts(config: Config, train_iters: int) -> tuple[list[Stage], list[int], int]:
    """(stages, first sample of each, samples of the whole run)."""
    from megatron.core import parallel_state

    stages = parse_stages(config)
    batches = BatchSchedule(config.schedule, parallel_state.get_data_parallel_world_size())
    steps = start_steps(stages, batches, config.data.seq_length)
    if steps[-1] >= train_iters:
        raise UsageError(f"schedule.stages[{len(steps) - 1}] starts at step {steps[-1]}, at or after the run's "
                         f"end (schedule.train_iters={train_iters})")
    return stages, [batches.samples_after(step) for step in steps], batches.samples_after(train_iters)


def build_staged_datasets(config: Config, train_iters: int, tokenizer: Any, packed: bool) -> tuple[Any, Any]:
    """The run's StagedDataset, and validation on `data.paths` (or, without them, the first stage's blend)."""
    from megatron_llm.training.data import build_datasets

    stages, starts, total = stage_starts(config, train_iters)
    gbs = config.schedule.global_batch_size
    datasets, valid = [], None
    for index, stage in enumerate(stages):
        samples = (starts[index + 1] if index + 1 < len(stages) else total) - starts[index]
        stage_config = dataclasses.replace(config, data=dataclasses.replace(config.data, paths=list(stage.paths)))
        train, stage_valid = build_datasets(stage_config, math.ceil(samples / gbs), tokenizer, packed_format=packed)
        datasets.append(train)
        valid = stage_valid if valid is None else valid
    if config.data.paths:
        _, valid = build_datasets(config, 1, tokenizer, packed_format=packed)
    return StagedDataset(datasets, starts, [s.name for s in stages]), valid


def add_stage_from_checkpoint(config: Config, args: Any, stage_file: Path) -> Config:
    """`train --from CKPT --stage FILE`: the config (`--config`, else the checkpoint's own) with one more
    stage starting at the checkpoint's step (at 0 with `--finetune`), lasting the stage's `steps`."""
    import yaml

    from megatron_llm.config.loader import apply_overrides, config_from_dict
    from megatron_llm.training.checkpoint.format import read_metadata, resolve_checkpoint

    if args.resume_from is None:
        raise UsageError("--stage needs --from CHECKPOINT (the run to continue)")
    if not stage_file.is_file():
        raise UsageError(f"{stage_file}: stage file not found")
    raw = yaml.safe_load(stage_file.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("steps"), int) or raw["steps"] < 1:
        raise UsageError(f"{stage_file}: a stage is a mapping with name, steps (>= 1), paths and its schedule")
    metadata = read_metadata(resolve_checkpoint(Path(args.resume_from)))
    if args.config is None:
        config = apply_overrides(config_from_dict(metadata["config"]), args.overrides)
    start = 0 if args.finetune else int(metadata["step"])
    previous = [s for s in config.schedule.stages if (s.get("start_step") or 0) < start] if start else []
    if start and not previous:
        previous = [{"name": "base", "paths": list(config.data.paths), "lr_schedule": "constant"}]
    stage = {k: v for k, v in raw.items() if k != "steps"}
    if start:
        stage["start_step"] = start
    config.schedule.stages = [*previous, stage]
    config.schedule.train_iters, config.schedule.train_tokens = start + raw["steps"], None
    return config
