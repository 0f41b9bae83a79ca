"""The finish step: totals into `curate.json` (the run's completion marker), then intermediate data goes."""

from __future__ import annotations

import shutil

from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.layout import read_json, remove_stale_temporaries, write_json
from megatron_llm.data.curate.pipeline.plan import Step

BULK_DIRS = ("docs", "keys", "rejects", "stats")


def run_finish(ctx: RunContext, step: Step, unit_index: int, progress: Progress) -> dict:
    layout = ctx.layout
    parts = [read_json(layout.stats_file(p)) for p in range(layout.n_parts)]
    totals = {
        "records": sum(s["records"] for s in parts),
        "malformed": sum(sum(s["malformed"].values()) for s in parts),
        "documents": sum(s["documents"] for s in parts),
        "removed": sum(sum(sum(r.values()) for r in s["removed"].values()) for s in parts),
        "kept": sum(s["kept"] for s in parts),
        "input_bytes": sum(s["input_bytes"] for s in parts),
    }
    dedup = {}
    for dedup_step in ctx.steps:
        if dedup_step.kind in ("buckets", "verify", "clusters"):
            dedup[dedup_step.name] = [layout.marker_info(dedup_step.name, u) for u in dedup_step.units(layout)]
    summary = {
        "fingerprint": ctx.fingerprint,
        "config": ctx.plan["config"],
        "inputs": ctx.plan["inputs"],
        "parts": [{"part": layout.part(p), "input": str(ctx.inputs[p])} for p in range(layout.n_parts)],
        "steps": ctx.plan["steps"],
        "dedup": dedup,
        "totals": totals,
    }
    write_json(layout.summary_file, summary)
    for directory in (layout.output, layout.output / "rejects", layout.output / "stats"):
        remove_stale_temporaries(directory)
    if not ctx.keep_work:
        _remove_bulk(ctx)
    progress(1)
    return totals


def _remove_bulk(ctx: RunContext) -> None:
    """Delete intermediate data, keeping the plan and the completion markers (tiny), so a process that
    looks at the run while this happens still sees every step as done."""
    for step in ctx.steps:
        directory = ctx.layout.step_dir(step.name)
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.is_dir() and entry.name in BULK_DIRS:
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_file() and entry.name.endswith(".npy"):
                entry.unlink(missing_ok=True)
