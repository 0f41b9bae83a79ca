"""Perplexity on held-out Megatron indexed shards (PREFIX.bin/.idx).

The documents are read in order and concatenated into one token stream, cut into windows of
`seq_length + 1` tokens that overlap by one (every token after the first is predicted exactly once, with
the window's earlier tokens as context).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from megatron_llm.errors import UsageError


def read_stream(prefix: str, max_tokens: int) -> np.ndarray:
    """Up to `max_tokens` tokens of the shard's documents, concatenated."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    for suffix in (".bin", ".idx"):
        if not Path(prefix + suffix).is_file():
            raise UsageError(f"{prefix + suffix}: not found (perplexity needs an indexed shard PREFIX)")
    dataset = IndexedDataset(prefix, mmap=True)
    parts, total = [], 0
    for i in range(len(dataset)):
        doc = np.asarray(dataset[i], dtype=np.int64)
        parts.append(doc[: max_tokens - total])
        total += len(parts[-1])
        if total >= max_tokens:
            break
    stream = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if len(stream) < 2:
        raise UsageError(f"{prefix}: holds {len(stream)} tokens; perplexity needs at least 2")
    return stream


def windows(stream: np.ndarray, seq_length: int) -> list[tuple[list[int], list[bool]]]:
    """(ids, scored mask) per window; the last one may be shorter."""
    out = []
    for start in range(0, max(len(stream) - 1, 0), seq_length):
        ids = stream[start:start + seq_length + 1].tolist()
        if len(ids) >= 2:
            out.append((ids, [True] * len(ids)))
    return out


def summarize(prefix: str, logprob: float, tokens: float) -> dict:
    nll = -logprob / max(tokens, 1.0)
    return {"task": Path(prefix).name, "kind": "perplexity", "path": prefix, "tokens": int(tokens),
            "nll": nll, "perplexity": math.exp(min(nll, 700.0))}
