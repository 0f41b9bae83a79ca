"""A map step for one input file: documents in, per-document stages, documents (and dedup keys) out."""

from __future__ import annotations

import shutil
from array import array
from contextlib import ExitStack
from typing import IO

import numpy as np

from megatron_llm.data.curate.config import build_doc_stage
from megatron_llm.data.curate.pipeline import kill_points
from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.docio import (
    doc_id,
    dumps,
    malformed_line,
    read_input,
    read_segment,
    reject_line,
    segment_line,
)
from megatron_llm.data.curate.pipeline.layout import atomic_file, load_array, read_json, save_array, write_json
from megatron_llm.data.curate.pipeline.plan import Segment, Step, clusters_step_of
from megatron_llm.data.curate.pipeline.stats import PartStats, merge_part_stats
from megatron_llm.data.curate.stages.dedup import ExactKeys, MinhashKeys, keyer_for
from megatron_llm.data.curate.stages.stage import DocStage
from megatron_llm.errors import located

KEY_BATCH = 4096
PROGRESS_EVERY = 256
DEDUP_REASONS = {"exact_dedup": "duplicate", "minhash_dedup": "near_duplicate", "simhash_dedup": "near_duplicate"}
_STAGE_CACHE: dict[tuple[str, int], list[DocStage]] = {}


def _stages(ctx: RunContext, segment: Segment) -> list[DocStage]:
    """The segment's stage objects, built once per process (language ID loads a model)."""
    key = (ctx.fingerprint, segment.index)
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = [build_doc_stage(spec, ctx.config.base_dir) for spec in segment.stages]
    stages = _STAGE_CACHE[key]
    for stage in stages:
        stage.counters.clear()
    return stages


def _keyer(segment: Segment) -> ExactKeys | MinhashKeys | None:
    return None if segment.before is None else keyer_for(segment.before)


def _removals(ctx: RunContext, segment: Segment, part: int) -> dict[int, int]:
    """doc id -> id of the kept copy, for the documents the previous dedup stage removes from this part."""
    if segment.after is None:
        return {}
    step = clusters_step_of(ctx.steps, segment.after)
    table = load_array(ctx.layout.removals(step.name, part))
    return dict(zip(table[0].tolist(), table[1].tolist()))


class _Writer:
    """Kept documents (final JSONL, or `id<TAB>json` plus offsets and keys for the next step)."""

    def __init__(self, handle: IO[bytes], final: bool, keyer, text_key: str) -> None:
        self.handle, self.final, self.keyer, self.text_key = handle, final, keyer, text_key
        self.position = 0
        self.ids = array("Q")
        self.offsets = array("Q")
        self.pending: list[str] = []
        self.keys: list[np.ndarray] = []

    def write(self, ident: int, doc: dict) -> None:
        if self.final:
            self.handle.write(dumps(doc) + b"\n")
            return
        line = segment_line(ident, doc)
        self.ids.append(ident)
        self.offsets.append(self.position)
        self.position += len(line)
        self.handle.write(line)
        if self.keyer is not None:
            self.pending.append(doc[self.text_key])
            if len(self.pending) >= KEY_BATCH:
                self.flush_keys()

    def flush_keys(self) -> None:
        if self.pending:
            self.keys.append(self.keyer.keys(self.pending))
            self.pending = []

    def key_array(self) -> np.ndarray:
        self.flush_keys()
        if self.keys:
            return np.concatenate(self.keys, axis=1)
        return np.empty((self.keyer.params.bands, 0, self.keyer.width), dtype=np.uint64)


def run_map(ctx: RunContext, step: Step, part: int, progress: Progress) -> dict:
    segment = step.segment
    layout = ctx.layout
    text_key = ctx.config.text_key
    stages = _stages(ctx, segment)
    stats = PartStats(layout.part(part), str(ctx.inputs[part]))
    removals = _removals(ctx, segment, part)
    after_label = segment.after.label if segment.after else ""
    after_reason = DEDUP_REASONS[segment.after.name] if segment.after else ""
    final = segment.before is None
    keyer = _keyer(segment)
    with ExitStack() as stack:
        if final:
            out = stack.enter_context(atomic_file(layout.output_file(part)))
            rejects = stack.enter_context(atomic_file(layout.rejects_file(part)))
            for earlier in ctx.steps:
                if earlier.kind == "map" and earlier.segment.index < segment.index:
                    with open(layout.step_rejects(earlier.name, part), "rb") as handle:
                        shutil.copyfileobj(handle, rejects, 1 << 20)
        else:
            out = stack.enter_context(atomic_file(layout.docs(step.name, part)))
            rejects = stack.enter_context(atomic_file(layout.step_rejects(step.name, part)))
        writer = _Writer(out, final, keyer, text_key)
        if segment.index == 0:
            path = ctx.inputs[part]
            stats.input_bytes = path.stat().st_size
            source = _input_docs(ctx, part, stats, rejects)
        else:
            previous = ctx.step(f"map-{segment.index - 1}")
            source = read_segment(layout.docs(previous.name, part))
        seen = 0
        for ident, doc in source:
            seen += 1
            if seen % PROGRESS_EVERY == 0:
                progress(PROGRESS_EVERY)
                kill_points.point(f"{step.name}/{layout.part(part)}/docs-{seen}")
            stats.docs_in += 1
            kept_copy = removals.get(ident)
            if kept_copy is not None:
                stats.remove(after_label, after_reason)
                rejects.write(
                    reject_line(after_label, after_reason, ctx.source(ident), doc, duplicate_of=ctx.source(kept_copy))
                )
                continue
            text = doc[text_key]
            for stage in stages:
                text, reason = stage.process(text, doc)
                if reason is not None:
                    doc[text_key] = text
                    stats.remove(stage.label, reason)
                    rejects.write(reject_line(stage.label, reason, ctx.source(ident), doc))
                    break
            else:
                doc[text_key] = text
                stats.docs_out += 1
                writer.write(ident, doc)
        progress(seen % PROGRESS_EVERY)
        if not final:
            save_array(layout.ids(step.name, part), np.frombuffer(writer.ids, dtype=np.uint64))
            save_array(layout.offsets(step.name, part), np.frombuffer(writer.offsets, dtype=np.uint64))
            if keyer is not None:
                save_array(layout.keys(step.name, part), writer.key_array())
    for stage in stages:
        if stage.counters:
            stats.add_counters(stage.label, stage.counters)
    if final:
        earlier = [
            read_json(layout.step_stats(s.name, part))
            for s in ctx.steps
            if s.kind == "map" and s.segment.index < segment.index
        ]
        write_json(layout.stats_file(part), merge_part_stats([*earlier, stats.to_dict()]))
    else:
        write_json(layout.step_stats(step.name, part), stats.to_dict())
    return {"docs_in": stats.docs_in, "docs_out": stats.docs_out}


def _input_docs(ctx: RunContext, part: int, stats: PartStats, rejects: IO[bytes]):
    """(doc id, doc) of the input file's good records; malformed ones are counted and rejected here."""
    path = ctx.inputs[part]
    for item in read_input(path, ctx.config.text_key):
        stats.records += 1
        if item.reason is None:
            yield doc_id(part, item.line), item.doc
            continue
        if ctx.on_error == "fail":
            raise located(str(path), item.line, item.message or item.reason)
        where = f"{path}:{item.line}"
        stats.malformed_line(item.reason, f"{where}: {item.message or item.reason}")
        rejects.write(malformed_line(item, where))
    if stats.records and sum(stats.malformed.values()) == stats.records:
        raise located(str(path), None, f"all {stats.records} lines were malformed (is it the right file, format "
                                       "and text_key?)")
