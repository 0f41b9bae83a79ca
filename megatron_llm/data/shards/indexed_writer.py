"""Megatron's indexed dataset format (`PREFIX.bin` + `PREFIX.idx`), written and read without torch.

The bytes are exactly those megatron-core's `IndexedDatasetBuilder` writes for the same sequences (the
tests compare them). Unlike that builder, the writer keeps nothing per document in memory: sequence
lengths and document indices are spilled to temporary files and streamed into the index at the end, so
memory stays bounded whatever the corpus size. Both files appear under their final names only when the
dataset is complete: an interrupted run leaves temporary files, never a `.bin/.idx` pair that looks valid.
"""

from __future__ import annotations

import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from megatron_llm.errors import UsageError

INDEX_HEADER = b"MMIDIDX\x00\x00"
INDEX_VERSION = 1
HEADER_BYTES = 34
DTYPE_CODES: dict[type, int] = {
    np.uint8: 1,
    np.int8: 2,
    np.int16: 3,
    np.int32: 4,
    np.int64: 5,
    np.float64: 6,
    np.float32: 7,
    np.uint16: 8,
}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_SPILL_ENTRIES = 1 << 20
_COPY_ENTRIES = 1 << 22


def optimal_dtype(vocab_size: int) -> type:
    """uint16 when every id fits (vocab_size < 65500, megatron-core's rule), else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


def temporary_path(path: str) -> str:
    return f"{path}.tmp{os.getpid()}"


class _Spill:
    """An append-only array of one dtype kept in a temporary file, buffered in memory."""

    def __init__(self, path: str, dtype: type) -> None:
        self.path = path
        self.dtype = np.dtype(dtype)
        self.count = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._file = open(path, "wb")  # noqa: SIM115 - closed in flush_and_close / remove

    def append(self, values: np.ndarray) -> None:
        if len(values) == 0:
            return
        self._buffer.append(np.ascontiguousarray(values, dtype=self.dtype))
        self._buffered += len(values)
        self.count += len(values)
        if self._buffered >= _SPILL_ENTRIES:
            self._flush()

    def _flush(self) -> None:
        for block in self._buffer:
            self._file.write(block.tobytes())
        self._buffer.clear()
        self._buffered = 0

    def copy_into(self, out, transform=None) -> None:
        """Stream the whole array into `out`, optionally through `transform(block) -> block`."""
        self._flush()
        self._file.flush()
        with open(self.path, "rb") as stream:
            while True:
                block = np.fromfile(stream, dtype=self.dtype, count=_COPY_ENTRIES)
                if block.size == 0:
                    break
                out.write((transform(block) if transform else block).tobytes())

    def remove(self) -> None:
        self._file.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class IndexedDatasetWriter:
    """Streams documents into `PREFIX.bin` and writes `PREFIX.idx` on `finish()`.

    Use as a context manager: leaving it through an exception removes the temporary files.
    """

    def __init__(self, prefix: str | Path, dtype: type) -> None:
        self.prefix = str(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype.type not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {self.dtype}")
        Path(self.prefix).parent.mkdir(parents=True, exist_ok=True)
        self._bin_tmp = temporary_path(self.prefix + ".bin")
        self._idx_tmp = temporary_path(self.prefix + ".idx")
        self._bin = open(self._bin_tmp, "wb")  # noqa: SIM115 - closed in finish / abort
        self._lengths = _Spill(temporary_path(self.prefix + ".lengths"), np.int32)
        self._docs = _Spill(temporary_path(self.prefix + ".docs"), np.int64)
        self.tokens = 0
        self.id_range: tuple[int, int] | None = None
        self._finished = False

    @property
    def sequences(self) -> int:
        return self._lengths.count

    @property
    def documents(self) -> int:
        return self._docs.count

    def add_documents(
        self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray
    ) -> None:
        """Append documents: their tokens back to back, each sequence's length, and each document's
        number of sequences (0 for an empty document, which still gets a document-index entry)."""
        tokens = np.asarray(tokens)
        if tokens.size:
            low, high = int(tokens.min()), int(tokens.max())
            if self.dtype == np.uint16 and (low < 0 or high > 0xFFFF):
                raise UsageError(f"token id {high} does not fit the dataset's dtype uint16")
            self._widen((low, high))
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self.tokens += int(tokens.size)
        start = self._lengths.count
        self._lengths.append(np.asarray(sequence_lengths, dtype=np.int32))
        self._docs.append(start + np.cumsum(np.asarray(sequences_per_document, dtype=np.int64)))

    def add_dataset(self, prefix: str | Path) -> None:
        """Append a whole existing dataset (same dtype), as megatron-core's `add_index` does."""
        index = read_index(prefix)
        if index.dtype != self.dtype:
            raise UsageError(f"{prefix}.idx: token dtype {index.dtype} differs from {self.dtype} of the other inputs")
        offset = self._lengths.count
        for start in range(0, index.sequence_count, _COPY_ENTRIES):
            self._lengths.append(np.array(index.sequence_lengths[start : start + _COPY_ENTRIES]))
        documents = index.document_indices
        for start in range(1, len(documents), _COPY_ENTRIES):
            self._docs.append(offset + np.array(documents[start : start + _COPY_ENTRIES]))
        with open(f"{prefix}.bin", "rb") as stream:
            shutil.copyfileobj(stream, self._bin, 16 << 20)
        self.tokens += int(index.token_count)
        from megatron_llm.data.shards.checks import token_id_range

        self._widen(token_id_range(str(prefix), index))
        del index

    def _widen(self, id_range: tuple[int, int] | None) -> None:
        if id_range is None:
            return
        if self.id_range is None:
            self.id_range = id_range
        else:
            self.id_range = (min(self.id_range[0], id_range[0]), max(self.id_range[1], id_range[1]))

    def finish(self) -> None:
        """Write the index and move both files to their final names (`.bin` first, then `.idx`)."""
        self._bin.close()
        itemsize = self.dtype.itemsize
        with open(self._idx_tmp, "wb") as out:
            out.write(INDEX_HEADER)
            out.write(struct.pack("<Q", INDEX_VERSION))
            out.write(struct.pack("<B", DTYPE_CODES[self.dtype.type]))
            out.write(struct.pack("<Q", self._lengths.count))
            out.write(struct.pack("<Q", self._docs.count + 1))
            self._lengths.copy_into(out)
            carry = np.zeros(1, dtype=np.int64)

            def pointers(lengths: np.ndarray) -> np.ndarray:
                ends = np.cumsum(lengths.astype(np.int64) * itemsize) + carry[0]
                starts = np.concatenate([carry, ends[:-1]])
                carry[0] = ends[-1]
                return starts

            self._lengths.copy_into(out, pointers)
            out.write(np.zeros(1, dtype=np.int64).tobytes())
            self._docs.copy_into(out)
        final_bin, final_idx = self.prefix + ".bin", self.prefix + ".idx"
        if os.path.exists(final_idx):
            os.unlink(final_idx)
        stats = final_bin[:-4] + ".stats.json"
        if os.path.exists(stats):
            os.unlink(stats)
        os.replace(self._bin_tmp, final_bin)
        os.replace(self._idx_tmp, final_idx)
        from megatron_llm.data.shards.checks import write_stats

        write_stats(self.prefix, self.id_range)
        self._lengths.remove()
        self._docs.remove()
        self._finished = True

    def abort(self) -> None:
        """Remove every temporary file; the final names are never touched."""
        self._bin.close()
        self._lengths.remove()
        self._docs.remove()
        for path in (self._bin_tmp, self._idx_tmp):
            if os.path.exists(path):
                os.unlink(path)

    def __enter__(self) -> IndexedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()


@dataclass
class IndexInfo:
    """A memory-mapped `.idx` file: arrays are views into the file, not copies."""

    path: str
    dtype: np.dtype
    sequence_lengths: np.ndarray
    sequence_pointers: np.ndarray
    document_indices: np.ndarray

    @property
    def sequence_count(self) -> int:
        return len(self.sequence_lengths)

    @property
    def document_count(self) -> int:
        return len(self.document_indices) - 1

    @property
    def token_count(self) -> int:
        return int(self.sequence_lengths.sum(dtype=np.int64))


def read_index(prefix: str | Path) -> IndexInfo:
    """Parse `PREFIX.idx`; UsageError naming the file when it is not a valid index."""
    path = f"{prefix}.idx"
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            head = stream.read(HEADER_BYTES)
    except OSError as error:
        raise UsageError(f"{path}: cannot read: {error.strerror}") from error
    if len(head) < HEADER_BYTES or head[:9] != INDEX_HEADER:
        raise UsageError(f"{path}: not a Megatron indexed dataset index (bad header)")
    version, code, sequences, documents = struct.unpack("<QBQQ", head[9:])
    if version != INDEX_VERSION or code not in CODE_DTYPES:
        raise UsageError(f"{path}: unsupported index version {version} or dtype code {code}")
    expected = HEADER_BYTES + 12 * sequences + 8 * documents
    if size < expected:
        raise UsageError(f"{path}: truncated: {size} bytes, the header promises {expected}")
    raw = np.memmap(path, mode="r", dtype=np.uint8)
    lengths = raw[HEADER_BYTES : HEADER_BYTES + 4 * sequences].view(np.int32)
    pointers = raw[HEADER_BYTES + 4 * sequences : HEADER_BYTES + 12 * sequences].view(np.int64)
    docs = raw[HEADER_BYTES + 12 * sequences : expected].view(np.int64)
    return IndexInfo(path, np.dtype(CODE_DTYPES[code]), lengths, pointers, docs)


def dataset_prefixes(paths: list[str]) -> list[str]:
    """Dataset prefixes named by `.bin`/`.idx` files or bare prefixes, de-duplicated, in order."""
    prefixes: list[str] = []
    for path in paths:
        prefix = path[:-4] if path.endswith((".bin", ".idx")) else path
        if prefix not in prefixes:
            prefixes.append(prefix)
    for prefix in prefixes:
        for suffix in (".bin", ".idx"):
            if not os.path.exists(prefix + suffix):
                raise UsageError(f"{prefix}{suffix}: no such file (a dataset needs both .bin and .idx)")
    return prefixes
