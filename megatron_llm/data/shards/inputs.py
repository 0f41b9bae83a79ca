"""What one preprocess-data run reads: its share of the input files, cut into chunks for the workers.

Sharding (`--shard-index I --num-shards N`) splits the concatenated input bytes into N equal ranges. A
line of an uncompressed JSONL (or line-mode text) file belongs to the range holding its first byte;
compressed files, Parquet files and whole-file text documents cannot be split and belong to the range
holding the file's first byte. So the shards, concatenated in order, hold every line exactly once and in
input order: merging them gives what a single run gives.

Chunks are produced in input order and carry what a worker needs to report "file:line". When a shard
starts inside a file, the line number of its first line is counted only if an error has to be reported.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from megatron_llm.data.readers import compression_of, file_kind, open_binary

CHUNK_BYTES = 4 << 20
TEXT_CHUNK_FILES = 256


@dataclass(frozen=True)
class Source:
    """One input file, or the byte range [start, end) of it that this shard reads."""

    index: int
    path: Path
    kind: str
    start: int = 0
    end: int | None = None

    @property
    def splittable(self) -> bool:
        return self.end is not None


@dataclass
class Chunk:
    """A unit of work: raw bytes of whole lines, one Parquet row group, or whole text files.

    `first_line` is None when the chunk is the first of a shard that starts mid-file (counted lazily).
    """

    kind: str
    source: int
    first_line: int | None
    data: bytes | None = None
    row_group: int | None = None
    files: list[tuple[int, bytes]] | None = None
    size: int = 0
    offset: int = 0


def plan_sources(files: list[Path], shard_index: int = 0, num_shards: int = 1, text_unit: str = "file") -> list[Source]:
    """The files (or byte ranges of files) that shard `shard_index` of `num_shards` reads."""
    sizes = [os.path.getsize(path) for path in files]
    total = sum(sizes)
    low, high = total * shard_index // num_shards, total * (shard_index + 1) // num_shards
    last = shard_index == num_shards - 1
    sources: list[Source] = []
    offset = 0
    for index, (path, size) in enumerate(zip(files, sizes)):
        kind = _record_kind(path, text_unit)
        if kind in ("jsonl", "lines") and compression_of(path) is None:
            start, end = max(low - offset, 0), min(high - offset, size)
            if start < end:
                sources.append(Source(index, path, kind, start, end))
        elif low <= offset < high or (last and offset == total):
            sources.append(Source(index, path, kind))
        offset += size
    return sources


def _record_kind(path: Path, text_unit: str) -> str:
    kind = file_kind(path)
    if kind == "text":
        return "lines" if text_unit == "line" else "textfile"
    return kind


def iter_chunks(sources: list[Source], keys: list[str]) -> Iterator[Chunk]:
    """Chunks of all sources, in order; whole-file text documents are batched together."""
    pending: list[tuple[int, bytes]] = []
    pending_bytes = 0
    for source in sources:
        if source.kind == "textfile":
            with open_binary(source.path) as stream:
                data = stream.read()
            pending.append((source.index, data))
            pending_bytes += len(data)
            if pending_bytes >= CHUNK_BYTES or len(pending) >= TEXT_CHUNK_FILES:
                yield Chunk("textfile", source.index, 1, files=pending, size=pending_bytes)
                pending, pending_bytes = [], 0
            continue
        if pending:
            yield Chunk("textfile", pending[0][0], 1, files=pending, size=pending_bytes)
            pending, pending_bytes = [], 0
        if source.kind == "parquet":
            yield from _parquet_chunks(source)
        else:
            yield from _line_chunks(source)
    if pending:
        yield Chunk("textfile", pending[0][0], 1, files=pending, size=pending_bytes)


def _parquet_chunks(source: Source) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    from megatron_llm.errors import located

    try:
        metadata = pq.ParquetFile(source.path).metadata
    except Exception as error:  # pyarrow raises ArrowInvalid / OSError subclasses of its own
        raise located(str(source.path), None, f"not a readable Parquet file: {error}") from error
    first = 1
    for group in range(metadata.num_row_groups):
        rows = metadata.row_group(group).num_rows
        size = metadata.row_group(group).total_byte_size
        yield Chunk("parquet", source.index, first, row_group=group, size=size)
        first += rows


def _line_chunks(source: Source) -> Iterator[Chunk]:
    line = 1 if source.start == 0 else None
    for data in _read_lines(source):
        yield Chunk(source.kind, source.index, line, data=data.data, size=len(data.data), offset=data.offset)
        if line is not None:
            line += data.data.count(b"\n")


@dataclass
class _Block:
    data: bytes
    offset: int


def _read_lines(source: Source) -> Iterator[_Block]:
    """Blocks of whole lines from the source's byte range, with the offset of each block's first line."""
    end = source.end if source.end is not None else float("inf")
    with open_binary(source.path) as stream:
        position = 0
        if source.start > 0:
            stream.seek(source.start - 1)
            position = source.start - 1 + len(stream.readline())
        line_start = position
        rest = b""
        while True:
            want = int(min(CHUNK_BYTES, end - position))
            block = stream.read(want) if want > 0 else b""
            if not block:
                if rest and want <= 0:
                    rest += stream.readline()
                if rest:
                    yield _Block(rest, line_start)
                return
            position += len(block)
            data = rest + block
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                continue
            rest = data[cut + 1 :]
            yield _Block(data[: cut + 1], line_start)
            line_start += cut + 1


def line_number_at(path: Path, offset: int) -> int:
    """1-based number of the line starting at byte `offset` (counted only when an error is reported)."""
    count = 0
    with open(path, "rb") as stream:
        remaining = offset
        while remaining > 0:
            block = stream.read(min(remaining, 16 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count + 1
