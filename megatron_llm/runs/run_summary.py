"""A run directory read back: its config, metrics records, checkpoints and events, as text."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from megatron_llm.errors import UsageError
from megatron_llm.training.checkpoint.format import list_checkpoints


@dataclass
class RunRecords:
    """metrics.jsonl split by kind; a resumed run's repeated steps keep their last record."""

    config: dict
    steps: list[dict] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    resumes: list[int] = field(default_factory=list)


def _records(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(path.read_text().splitlines()):
                break  # a run killed mid-write leaves a partial last line
            raise UsageError(f"{path}:{number}: not a JSON line") from None
    return records


def read_run(run_dir: Path) -> RunRecords:
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UsageError(f"{run_dir}: not a run directory (no config.yaml)")
    run = RunRecords(config=yaml.safe_load(config_path.read_text()) or {})
    metrics_path = run_dir / "metrics.jsonl"
    records = _records(metrics_path) if metrics_path.is_file() else []
    by_step: dict[int, dict] = {}
    last_step = 0
    for record in records:
        step = int(record.get("step", 0))
        if "loss" in record:
            if step <= last_step and step in by_step:
                run.resumes.append(step)
            by_step[step] = record
            last_step = step
            if record["loss"] is None:
                run.events.append(f"step {step}: non-finite loss, skipped")
        if record.get("val_loss") is not None:
            run.validation.append(record)
        if "rollback_to" in record:
            run.events.append(f"step {step}: loss spike {record.get('spike_loss'):.4f}, rolled back to step "
                              f"{record['rollback_to']}, skipped samples {record.get('skipped_samples')}")
    run.steps = [by_step[s] for s in sorted(by_step)]
    run.events += [f"step {s}: resumed (steps from {s} on were trained again)" for s in sorted(set(run.resumes))]
    return run


def planned_iters(config: dict) -> int | None:
    schedule, data = config.get("schedule", {}), config.get("data", {})
    if schedule.get("train_iters"):
        return int(schedule["train_iters"])
    if schedule.get("train_tokens"):
        return math.ceil(schedule["train_tokens"] / (schedule["global_batch_size"] * data["seq_length"]))
    return None


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def describe(run_dir: Path) -> str:
    """The text `runs show` prints."""
    run_dir = Path(run_dir)
    run = read_run(run_dir)
    c = run.config
    m, p, s, d, o = (c.get(k, {}) for k in ("model", "parallel", "schedule", "data", "optim"))
    lines = [
        f"run: {run_dir}",
        f"model: {m.get('num_layers')} layers, hidden {m.get('hidden_size')}, {m.get('num_attention_heads')} heads, "
        f"vocab {m.get('vocab_size')}, precision {c.get('precision', {}).get('dtype')}",
        f"layout: TP={p.get('tensor')} PP={p.get('pipeline')} CP={p.get('context')} "
        f"global batch {s.get('global_batch_size')} x {d.get('seq_length')} tokens, lr {o.get('lr')}",
    ]
    total = planned_iters(c)
    if run.steps:
        last = run.steps[-1]
        tokens = last.get("consumed_samples", 0) * int(d.get("seq_length") or 0)
        done = f"{last['step']}/{total} steps ({100 * last['step'] / total:.1f}%)" if total else f"{last['step']} steps"
        lines.append(f"progress: {done}, {last.get('consumed_samples')} samples, {tokens:,} tokens")
        mfu = last.get("mfu")
        lines.append(
            f"last step {last['step']}: loss {_fmt(last.get('loss'), '.4f')} | lr {_fmt(last.get('lr'), '.3e')} | "
            f"grad norm {_fmt(last.get('grad_norm'), '.3f')} | tokens/s {_fmt(last.get('tokens_per_s'), '.0f')} | "
            f"TFLOP/s/GPU {_fmt(last.get('tflops_per_device'), '.2f')} | MFU {_fmt(mfu * 100 if mfu else None, '.1f')}"
            f" | mem {_fmt((last.get('mem_bytes') or 0) / 2**30, '.2f')} GiB | skipped {last.get('skipped_steps', 0)}")
    else:
        lines.append("progress: no steps logged yet")
    if run.validation:
        val = run.validation[-1]
        lines.append(f"last validation: step {val['step']}: val loss {val['val_loss']:.4f}")
    root = Path(c.get("checkpoint", {}).get("dir") or run_dir / "checkpoints")
    entries = list_checkpoints(root)
    shown = [f"{e.step}{'' if e.complete else ' (INCOMPLETE)'}{' (latest)' if e.latest else ''} "
             f"{e.size_bytes / 2**20:.1f} MiB" for e in entries]
    lines.append(f"checkpoints in {root}: " + (", ".join(shown) or "none"))
    mirror = c.get("checkpoint", {}).get("mirror")
    if mirror:
        lines.append(f"mirror: {mirror}")
    trackers = run_dir / "trackers.json"
    if trackers.is_file():
        ids = json.loads(trackers.read_text())
        lines.append("trackers: " + ", ".join(f"{name} run {rid}" for name, rid in sorted(ids.items())))
    lines.append("events: " + ("none" if not run.events else ""))
    lines += [f"  {event}" for event in run.events]
    return "\n".join(lines)
