"""The checks a reader of an indexed dataset relies on, shared by inspect-data, merge-shards and train.

`check_dataset(prefix)` verifies, in order and without reading the tokens: the `.idx` header, that the
`.idx` holds what its header promises, that `.bin` has exactly the bytes the index describes, that the
sequence pointers are the running sum of the lengths, and that document indices rise from 0 to the
sequence count. `token_id_range(prefix)` is the smallest and largest token id of the dataset: read from the
`PREFIX.stats.json` sidecar preprocess-data and merge-shards write, or computed once (one pass over the
`.bin`) and cached in that sidecar when the directory is writable. The sidecar is trusted only while the
`.bin`'s size and modification time are the ones it records. Every failure is a UsageError naming the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from megatron_llm.data.shards.indexed_writer import IndexInfo, read_index
from megatron_llm.errors import UsageError

STATS_SUFFIX = ".stats.json"
_BLOCK = 1 << 22


@dataclass(frozen=True)
class DatasetSummary:
    prefix: str
    documents: int
    sequences: int
    tokens: int
    dtype: str


def validate(prefix: str, index: IndexInfo) -> None:
    """UsageError naming the file when the `.bin`/`.idx` pair is not a consistent dataset."""
    bin_path = f"{prefix}.bin"
    if not os.path.exists(bin_path):
        raise UsageError(f"{bin_path}: no such file")
    itemsize = index.dtype.itemsize
    expected = index.token_count * itemsize
    size = os.path.getsize(bin_path)
    if (index.sequence_lengths < 0).any():
        raise UsageError(f"{index.path}: negative sequence length")
    if size != expected:
        state = "truncated" if size < expected else "longer than its index"
        raise UsageError(f"{bin_path}: {size} bytes, the index describes {expected} ({state})")
    carry = 0
    for start in range(0, index.sequence_count, _BLOCK):
        lengths = index.sequence_lengths[start : start + _BLOCK].astype(np.int64) * itemsize
        pointers = carry + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        if not np.array_equal(pointers, index.sequence_pointers[start : start + _BLOCK]):
            raise UsageError(f"{index.path}: sequence pointers do not match the lengths near sequence {start}")
        carry += int(lengths.sum())
    documents = index.document_indices
    if len(documents) == 0 or documents[0] != 0 or documents[-1] != index.sequence_count:
        raise UsageError(f"{index.path}: document indices must run from 0 to {index.sequence_count}")
    for start in range(0, len(documents), _BLOCK):
        block = documents[start : start + _BLOCK + 1]
        if (np.diff(block) < 0).any():
            raise UsageError(f"{index.path}: document indices decrease near document {start}")


def check_dataset(prefix: str, require_documents: bool = False) -> DatasetSummary:
    """Header, sizes, pointers and document indices of `prefix`; with `require_documents`, at least one token."""
    prefix = str(prefix)
    index = read_index(prefix)
    validate(prefix, index)
    if require_documents and index.token_count == 0:
        raise UsageError(f"{prefix}.bin: the dataset holds no tokens ({index.document_count} documents)")
    return DatasetSummary(prefix, index.document_count, index.sequence_count, index.token_count, str(index.dtype))


def document_tokens(index: IndexInfo) -> np.ndarray:
    """Tokens per document (one int64 per document)."""
    ends = np.concatenate([[0], np.cumsum(index.sequence_lengths, dtype=np.int64)])
    return ends[index.document_indices[1:]] - ends[index.document_indices[:-1]]


def _bin_identity(prefix: str) -> dict:
    stat = os.stat(f"{prefix}.bin")
    return {"bin_size": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns}


def write_stats(prefix: str, id_range: tuple[int, int] | None) -> None:
    """Record the dataset's smallest and largest token ids (None when it has no tokens); best effort."""
    path = f"{prefix}{STATS_SUFFIX}"
    tmp = f"{path}.tmp{os.getpid()}"
    low, high = id_range if id_range is not None else (None, None)
    try:
        with open(tmp, "w") as stream:
            json.dump({"min_token_id": low, "max_token_id": high, **_bin_identity(prefix)}, stream)
        os.replace(tmp, path)
    except OSError:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached_range(prefix: str) -> tuple[bool, tuple[int, int] | None]:
    try:
        with open(f"{prefix}{STATS_SUFFIX}") as stream:
            stats = json.load(stream)
    except (OSError, json.JSONDecodeError):
        return False, None
    if not isinstance(stats, dict) or any(stats.get(k) != v for k, v in _bin_identity(prefix).items()):
        return False, None
    low, high = stats.get("min_token_id"), stats.get("max_token_id")
    if low is None and high is None:
        return True, None
    if not isinstance(low, int) or not isinstance(high, int):
        return False, None
    return True, (low, high)


def scan_token_range(prefix: str, dtype: np.dtype) -> tuple[int, int] | None:
    """(smallest, largest) token id in `PREFIX.bin` (one streaming pass), None when it is empty."""
    path = f"{prefix}.bin"
    if os.path.getsize(path) == 0:
        return None
    data = np.memmap(path, mode="r", dtype=dtype)
    low = high = None
    for start in range(0, len(data), _BLOCK * 4):
        block = data[start : start + _BLOCK * 4]
        block_low, block_high = int(block.min()), int(block.max())
        low = block_low if low is None else min(low, block_low)
        high = block_high if high is None else max(high, block_high)
    return low, high


def token_id_range(prefix: str, index: IndexInfo | None = None) -> tuple[int, int] | None:
    """The dataset's (smallest, largest) token id, from the sidecar or computed once and cached."""
    prefix = str(prefix)
    found, value = _cached_range(prefix)
    if found:
        return value
    index = index or read_index(prefix)
    value = scan_token_range(prefix, index.dtype)
    write_stats(prefix, value)
    return value


def check_vocabulary(prefix: str, vocab_size: int, field: str = "model.vocab_size") -> None:
    """UsageError naming the shard and both numbers when a token id is outside [0, vocab_size)."""
    id_range = token_id_range(prefix)
    if id_range is None:
        return
    low, high = id_range
    if low < 0:
        raise UsageError(f"{prefix}.bin: holds token id {low}; token ids cannot be negative (corrupt shard)")
    if high >= vocab_size:
        raise UsageError(f"{prefix}.bin: holds token id {high}, but {field}={vocab_size} admits ids up to "
                         f"{vocab_size - 1} (set data.tokenizer to the tokenizer the shards were made with, or "
                         f"{field} > {high})")
