"""The verify step of near-dedup, for one input file: keep only candidate edges whose documents are really
similar (MinHash: exact Jaccard of the shingle sets reaches the threshold; SimHash: fingerprints within the
Hamming distance).

The documents are read back from the map step's intermediate files by byte offset, so memory holds
only the documents that appear in this file's candidate edges.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.docio import read_segment_doc
from megatron_llm.data.curate.pipeline.layout import load_array, save_array
from megatron_llm.data.curate.pipeline.plan import Step
from megatron_llm.data.curate.stages.dedup import keyer_for


def _candidate_edges(ctx: RunContext, step: Step, part: int) -> np.ndarray:
    """Distinct (document, representative) edges, over all bands, whose document lies in `part`."""
    buckets = ctx.step(step.requires[0])
    low, high = np.uint64(part << 32), np.uint64((part + 1) << 32)
    pieces = []
    for unit in buckets.units(ctx.layout):
        edges = load_array(ctx.layout.edges(buckets.name, unit), mmap=True)
        lo, hi = np.searchsorted(edges[0], [low, high])
        pieces.append(np.array(edges[:, lo:hi]))
    if not pieces:
        return np.empty((2, 0), dtype=np.uint64)
    edges = np.concatenate(pieces, axis=1)
    return np.unique(edges, axis=1) if edges.shape[1] else edges


def _texts(ctx: RunContext, step: Step, ids: np.ndarray) -> dict[int, str]:
    """Text of each document id (sorted ids), read by offset from the map step's document files."""
    layout, text_key = ctx.layout, ctx.config.text_key
    parts = (ids >> np.uint64(32)).astype(np.int64)
    texts: dict[int, str] = {}
    with ExitStack() as stack:
        for part in np.unique(parts).tolist():
            wanted = ids[parts == part]
            all_ids = load_array(layout.ids(step.keys_step, part), mmap=True)
            offsets = load_array(layout.offsets(step.keys_step, part), mmap=True)
            rows = np.searchsorted(all_ids, wanted)
            handle = stack.enter_context(open(layout.docs(step.keys_step, part), "rb"))
            for ident, row in zip(wanted.tolist(), rows.tolist()):
                texts[ident] = read_segment_doc(handle, int(offsets[row]))[text_key]
    return texts


def run_verify(ctx: RunContext, step: Step, part: int, progress: Progress) -> dict:
    edges = _candidate_edges(ctx, step, part)
    ids = np.unique(edges.reshape(-1))
    texts = _texts(ctx, step, ids)
    keep = keyer_for(step.dedup).similar(texts, edges)
    verified = edges[:, keep] if edges.shape[1] else edges
    save_array(ctx.layout.edges(step.name, ctx.layout.part(part)), verified)
    progress(1)
    return {"candidates": int(edges.shape[1]), "verified": int(verified.shape[1])}
