"""The bucket step of a dedup stage: for one band, documents with equal keys become candidate edges.

Each edge links a document to the smallest document id in its bucket. Only one band's keys (of every
input file) are in memory at a time, and `partitions` splits a band further by key range.
"""

from __future__ import annotations

import numpy as np

from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.layout import load_array, save_array
from megatron_llm.data.curate.pipeline.plan import Step


def group_edges(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(2, E) uint64 edges [document, smallest id with the same key], sorted by document.

    `keys` is (n, width) uint64, `ids` (n,) uint64; every document but the smallest of each group of
    equal keys gets one edge.
    """
    if len(ids) == 0:
        return np.empty((2, 0), dtype=np.uint64)
    order = np.lexsort((ids, *[keys[:, j] for j in reversed(range(keys.shape[1]))]))
    sorted_keys, sorted_ids = keys[order], ids[order]
    starts_group = np.ones(len(ids), dtype=bool)
    starts_group[1:] = (sorted_keys[1:] != sorted_keys[:-1]).any(axis=1)
    first = np.maximum.accumulate(np.where(starts_group, np.arange(len(ids)), 0))
    members = ~starts_group
    docs, reps = sorted_ids[members], sorted_ids[first[members]]
    by_doc = np.argsort(docs, kind="stable")
    return np.stack([docs[by_doc], reps[by_doc]])


def run_buckets(ctx: RunContext, step: Step, unit_index: int, progress: Progress) -> dict:
    layout = ctx.layout
    partitions = step.dedup.params.partitions
    band, partition = divmod(unit_index, partitions)
    all_keys, all_ids = [], []
    for part in range(layout.n_parts):
        keys = load_array(layout.keys(step.keys_step, part), mmap=True)
        ids = load_array(layout.ids(step.keys_step, part))
        band_keys = np.asarray(keys[band])
        if partitions > 1:
            chosen = (band_keys[:, 0] >> np.uint64(40)) % np.uint64(partitions) == partition
            band_keys, ids = band_keys[chosen], ids[chosen]
        all_keys.append(band_keys)
        all_ids.append(ids)
    width = all_keys[0].shape[1] if all_keys else 1
    keys = np.concatenate(all_keys) if all_keys else np.empty((0, width), dtype=np.uint64)
    ids = np.concatenate(all_ids) if all_ids else np.empty(0, dtype=np.uint64)
    edges = group_edges(keys, ids)
    unit = step.units(layout)[unit_index]
    save_array(layout.edges(step.name, unit), edges)
    progress(1)
    return {"documents": int(len(ids)), "edges": int(edges.shape[1])}
