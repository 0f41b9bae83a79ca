"""The cluster step of a dedup stage: union-find over the edges; all but the smallest id of each cluster
are removed (a deterministic choice: the earliest document in input order is kept)."""

from __future__ import annotations

import numpy as np

from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.layout import load_array, save_array
from megatron_llm.data.curate.pipeline.plan import Step


def union_find_roots(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Root of every node 0..n-1 after joining the pairs (a[i], b[i]); each root is its cluster's minimum.

    Vectorised union-find: every round hooks the larger root of each edge under the smaller one, then
    compresses paths by pointer jumping until each node points at its root; rounds repeat until every
    edge joins nodes with the same root. Parents only ever decrease, so no cycles can form.
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return parent
        low, high = np.minimum(ra[differ], rb[differ]), np.maximum(ra[differ], rb[differ])
        np.minimum.at(parent, high, low)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand


def cluster_removals(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(removed ids, id each is a duplicate of, summary) for (2, E) edges of document ids."""
    if edges.shape[1] == 0:
        empty = np.empty(0, dtype=np.uint64)
        return empty, empty, {"edges": 0, "clusters": 0, "removed": 0, "largest_cluster": 0}
    nodes, inverse = np.unique(edges.reshape(-1), return_inverse=True)
    inverse = inverse.reshape(2, -1)
    roots = union_find_roots(inverse[0], inverse[1], len(nodes))
    removed = roots != np.arange(len(nodes))
    sizes = np.bincount(roots)
    summary = {
        "edges": int(edges.shape[1]),
        "clusters": int((~removed).sum()),
        "removed": int(removed.sum()),
        "largest_cluster": int(sizes.max()),
    }
    return nodes[removed], nodes[roots[removed]], summary


def run_clusters(ctx: RunContext, step: Step, unit_index: int, progress: Progress) -> dict:
    layout = ctx.layout
    source = next(s for s in ctx.steps if s.requires and s.name == step.requires[0])
    edges = [load_array(layout.edges(source.name, unit)) for unit in source.units(layout)]
    all_edges = np.concatenate(edges, axis=1) if edges else np.empty((2, 0), dtype=np.uint64)
    removed, kept_as, summary = cluster_removals(all_edges)
    parts = (removed >> np.uint64(32)).astype(np.int64)
    bounds = np.searchsorted(parts, np.arange(layout.n_parts + 1))
    for part in range(layout.n_parts):
        lo, hi = bounds[part], bounds[part + 1]
        save_array(layout.removals(step.name, part), np.stack([removed[lo:hi], kept_as[lo:hi]]))
    progress(1)
    return summary
