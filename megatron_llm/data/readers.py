"""Streaming readers for corpus files: JSONL (plain, gzip, zstd), Parquet and plain text.

Everything here streams: memory is bounded by one read chunk (or one Parquet record batch), never by the
file. Nothing imports torch. Errors about the input are `UsageError`s naming the file (and line).

Line numbers are 1-based. For Parquet the "line" is the 1-based row number; for a `.txt` file read as
one document it is 1.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from megatron_llm.errors import UsageError, located

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst", ".json", ".json.gz", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt", ".txt.gz", ".txt.zst")
SUPPORTED_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES + TEXT_SUFFIXES

BAD_JSON = "bad_json"
MISSING_KEY = "missing_key"
INVALID_UTF8 = "invalid_utf8"
ERROR_REASONS = (BAD_JSON, MISSING_KEY, INVALID_UTF8)

DEFAULT_CHUNK_BYTES = 4 << 20
_GLOB_CHARS = frozenset("*?[")


def file_kind(path: Path | str) -> str:
    """'jsonl', 'parquet' or 'text' from the file name; UsageError for anything else."""
    name = str(path).lower()
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise located(str(path), None, f"unsupported file type (expected one of {', '.join(SUPPORTED_SUFFIXES)})")


def _supported(path: Path) -> bool:
    return path.is_file() and str(path).lower().endswith(SUPPORTED_SUFFIXES)


def expand_inputs(patterns: Iterable[str]) -> list[Path]:
    """Files named by paths, globs (`**` recursive) and directories (searched recursively).

    The result is sorted within each pattern, patterns keep their order, duplicates are dropped, so the
    same arguments always give the same list. A pattern matching nothing is a UsageError naming it.
    """
    seen: set[Path] = set()
    files: list[Path] = []
    for pattern in patterns:
        matches: list[Path] = []
        if _GLOB_CHARS & set(pattern):
            for hit in sorted(glob.glob(pattern, recursive=True)):
                path = Path(hit)
                matches += sorted(p for p in path.rglob("*") if _supported(p)) if path.is_dir() else [path]
        else:
            path = Path(pattern)
            if path.is_dir():
                matches = sorted(p for p in path.rglob("*") if _supported(p))
            elif path.exists():
                matches = [path]
        matches = [p for p in matches if p.is_file()]
        if not matches:
            raise UsageError(f"input {pattern!r} matches no file (looked for {', '.join(SUPPORTED_SUFFIXES)})")
        for path in matches:
            file_kind(path)
            if path not in seen:
                seen.add(path)
                files.append(path)
    return files


GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def compression_of(path: Path | str) -> str | None:
    """'gzip' or 'zstd' from the file's first bytes (whatever its name says), else None."""
    try:
        with open(path, "rb") as stream:
            head = stream.read(4)
    except OSError as error:
        raise located(str(path), None, f"cannot read: {error.strerror or error}") from error
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head == ZSTD_MAGIC:
        return "zstd"
    return None


class _ZstdReader(io.RawIOBase):
    """Decompresses concatenated zstd frames and notices a stream that ends inside a frame."""

    def __init__(self, raw: BinaryIO) -> None:
        import zstandard

        super().__init__()
        self.raw = raw
        self._factory = zstandard.ZstdDecompressor()
        self._decoder = self._factory.decompressobj()
        self._pending = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            block = self.raw.read(1 << 20)
            if not block:
                if self._in_frame:
                    raise EOFError("premature end of a zstd frame (the file is truncated)")
                return 0
            self._pending = self._feed(block)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count

    def _feed(self, block: bytes) -> bytes:
        out = []
        while block:
            self._in_frame = True
            out.append(self._decoder.decompress(block))
            if not self._decoder.eof:
                break
            self._in_frame = False
            block = self._decoder.unused_data
            self._decoder = self._factory.decompressobj()
        return b"".join(out)

    def close(self) -> None:
        self.raw.close()
        super().close()


class _GuardedReader(io.RawIOBase):
    """A decompressing stream whose truncation or corruption is a UsageError naming the file and the
    compressed byte offset where reading stopped."""

    def __init__(self, path: Path | str, inner: BinaryIO, raw: BinaryIO, kind: str) -> None:
        super().__init__()
        self.path, self.inner, self.raw, self.kind = str(path), inner, raw, kind

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        try:
            return self.inner.readinto(buffer)
        except UsageError:
            raise
        except Exception as error:  # EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError
            if not isinstance(error, (EOFError, OSError)) and not type(error).__module__.startswith(("zstandard",
                                                                                                       "zlib")):
                raise
            offset = self.raw.tell() if not self.raw.closed else "?"
            raise located(self.path, None, f"truncated or corrupt {self.kind} stream at compressed byte {offset} "
                                           f"of {os.path.getsize(self.path)}: {error}") from error

    def close(self) -> None:
        self.inner.close()
        self.raw.close()
        super().close()


def open_binary(path: Path | str) -> BinaryIO:
    """The decompressed bytes of a file: gzip and zstd are recognised by their magic bytes, whatever the
    file's name; a truncated or corrupt compressed stream is a UsageError when it is read."""
    kind = compression_of(path)
    if kind is None:
        return open(path, "rb")
    raw = open(path, "rb")  # noqa: SIM115 - owned and closed by the returned reader
    inner = gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gzip" else _ZstdReader(raw)
    return io.BufferedReader(_GuardedReader(path, inner, raw, kind), buffer_size=1 << 20)  # type: ignore


def iter_line_chunks(path: Path | str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, list[bytes]]]:
    """(first line number, lines) for consecutive blocks of about `chunk_bytes` of input.

    Lines are split on b"\\n" only (as JSONL requires) and the "\\n" is removed; a final line without a
    newline is still a line. Reading in large blocks is several times faster than line iteration.
    """
    line_no = 1
    rest = b""
    try:
        with open_binary(path) as stream:
            while True:
                block = stream.read(chunk_bytes)
                if not block:
                    break
                block = rest + block
                cut = block.rfind(b"\n")
                if cut < 0:
                    rest = block
                    continue
                lines = block[:cut].split(b"\n")
                rest = block[cut + 1 :]
                yield line_no, lines
                line_no += len(lines)
    except (OSError, EOFError) as error:
        raise located(str(path), None, f"cannot read: {error}") from error
    except Exception as error:  # zstandard.ZstdError and friends: a corrupt compressed stream
        if type(error).__module__.startswith("zstandard"):
            raise located(str(path), None, f"cannot read: {error}") from error
        raise
    if rest:
        yield line_no, [rest]


def iter_lines(path: Path | str) -> Iterator[bytes]:
    """The raw lines of a `.jsonl`/`.jsonl.gz`/`.jsonl.zst`/`.txt` file, without their trailing newline."""
    for _, lines in iter_line_chunks(path):
        yield from lines


def iter_parquet_batches(path: Path | str, columns: list[str] | None = None, batch_rows: int = 8192) -> Iterator[dict]:
    """Column dicts (name -> list of values) of consecutive Parquet record batches."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid/ArrowIOError types
        raise located(str(path), None, f"not a readable Parquet file: {error}") from error
    present = set(parquet.schema_arrow.names)
    wanted = None if columns is None else [c for c in columns if c in present]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=wanted):
        yield batch.to_pydict()


def iter_parquet_rows(path: Path | str, columns: list[str] | None = None) -> Iterator[dict]:
    """Rows of a Parquet file as dicts, one record batch in memory at a time."""
    for batch in iter_parquet_batches(path, columns):
        names = list(batch)
        for values in zip(*(batch[name] for name in names)):
            yield dict(zip(names, values))


class Record(NamedTuple):
    """One input line: the parsed object, or why it could not be used (`reason` in ERROR_REASONS)."""

    path: Path
    line: int
    doc: dict | None
    reason: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None

    def error(self) -> UsageError:
        """The run-stopping error for a bad record: `file:line: message`."""
        return located(str(self.path), self.line, self.message or str(self.reason))


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False


def check_doc(doc: object, keys: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(reason, message) when `doc` is not an object holding a string (or list of strings) per key."""
    if not isinstance(doc, dict):
        return BAD_JSON, f"expected a JSON object, got {type(doc).__name__}"
    for key in keys:
        value = doc.get(key)
        if value is None:
            return MISSING_KEY, f"missing key {key!r}" if key not in doc else f"key {key!r} is null"
        if not isinstance(value, str) and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            return BAD_JSON, f"key {key!r} is a {type(value).__name__}, expected a string or a list of strings"
    return None, None


def parse_line(raw: bytes, keys: tuple[str, ...] = ("text",)) -> tuple[dict | None, str | None, str | None]:
    """(doc, reason, message) for one raw JSONL line; reason is None when the line is usable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return None, INVALID_UTF8, f"invalid UTF-8 at byte {error.start}"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as error:
        if not text.strip():
            return None, BAD_JSON, "invalid JSON: blank line"
        return None, BAD_JSON, f"invalid JSON: {error.msg} (column {error.colno})"
    reason, message = check_doc(doc, keys)
    if reason is not None:
        return None, reason, message
    if ("\\ud" in text or "\\uD" in text) and any(_has_lone_surrogate(doc[key]) for key in keys):
        return None, INVALID_UTF8, "invalid UTF-8 (lone surrogate escape in a JSON string)"
    return doc, None, None


def iter_records(path: Path | str, keys: Iterable[str] = ("text",), text_unit: str = "file") -> Iterator[Record]:
    """Every record of one input file, good or bad, in order.

    JSONL lines are parsed and checked for `keys`; Parquet rows are checked the same way; a `.txt` file
    is one document `{"text": content}` (`text_unit="file"`) or one per line (`text_unit="line"`).
    """
    path = Path(path)
    keys = tuple(keys)
    kind = file_kind(path)
    if kind == "jsonl":
        for first, lines in iter_line_chunks(path):
            for offset, raw in enumerate(lines):
                doc, reason, message = parse_line(raw, keys)
                yield Record(path, first + offset, doc, reason, message)
    elif kind == "parquet":
        for row_no, row in enumerate(iter_parquet_rows(path, list(keys)), start=1):
            reason, message = check_doc(row, keys)
            yield Record(path, row_no, None if reason else row, reason, message)
    else:
        yield from _iter_text_records(path, keys, text_unit)


def _iter_text_records(path: Path, keys: tuple[str, ...], text_unit: str) -> Iterator[Record]:
    key = keys[0] if keys else "text"
    if text_unit == "line":
        for first, lines in iter_line_chunks(path):
            for offset, raw in enumerate(lines):
                yield _text_record(path, first + offset, raw, key)
    elif text_unit == "file":
        with open_binary(path) as stream:
            record = _text_record(path, 1, stream.read(), key)
        yield record
    else:
        raise UsageError(f"text_unit must be 'file' or 'line', got {text_unit!r}")


def _text_record(path: Path, line: int, raw: bytes, key: str) -> Record:
    try:
        return Record(path, line, {key: raw.decode("utf-8")})
    except UnicodeDecodeError as error:
        line += raw.count(b"\n", 0, error.start)
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1)
        return Record(path, line, None, INVALID_UTF8, f"invalid UTF-8 at byte {column}")
