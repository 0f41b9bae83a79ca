"""Reading documents into a map step and writing them out: inputs, intermediate segments, rejects.

A document is identified across the whole run by `part << 32 | line` (its input file's index in the sorted
input list and its 1-based line or row number), so every choice made from ids (which copy of a duplicate
is kept) is the same however the run is split into processes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, NamedTuple

from megatron_llm.data import readers

MAX_RAW_CHARS = 1 << 20


def doc_id(part: int, line: int) -> int:
    return (part << 32) | line


def split_id(value: int) -> tuple[int, int]:
    return value >> 32, value & 0xFFFFFFFF


def dumps(obj: object) -> bytes:
    """One JSON line's bytes (no newline). Values JSON lacks (Parquet dates, decimals) become strings;
    strings with lone surrogates are written with \\u escapes, so the output is always valid UTF-8."""
    text = json.dumps(obj, ensure_ascii=False, default=str)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, default=str).encode("ascii")


class Item(NamedTuple):
    """One input record: a document, or a malformed line with its reason."""

    line: int
    doc: dict | None
    reason: str | None = None
    message: str | None = None
    raw: bytes | None = None


def _check(doc: object, text_key: str) -> tuple[str | None, str | None]:
    reason, message = readers.check_doc(doc, (text_key,))
    if reason is None and not isinstance(doc[text_key], str):  # type: ignore[index]
        return readers.BAD_JSON, f"key {text_key!r} is a list; curate needs a string"
    return reason, message


def read_input(path: Path, text_key: str) -> Iterator[Item]:
    """Every record of one input file (JSONL, .gz, .zst, Parquet with all its columns, or text)."""
    kind = readers.file_kind(path)
    if kind == "jsonl":
        for first, lines in readers.iter_line_chunks(path):
            for offset, raw in enumerate(lines):
                doc, reason, message = readers.parse_line(raw, (text_key,))
                if reason is None:
                    reason, message = _check(doc, text_key)
                if reason is None:
                    yield Item(first + offset, doc)
                else:
                    yield Item(first + offset, None, reason, message, raw)
    elif kind == "parquet":
        for row, doc in enumerate(readers.iter_parquet_rows(path), start=1):
            reason, message = _check(doc, text_key)
            yield Item(row, None if reason else doc, reason, message, None if reason is None else dumps(doc))
    else:
        for record in readers.iter_records(path, (text_key,)):
            yield Item(record.line, record.doc, record.reason, record.message)


def read_segment(path: Path) -> Iterator[tuple[int, dict]]:
    """(doc id, document) from an intermediate `id<TAB>json` file."""
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            head, _, body = line.partition(b"\t")
            yield int(head), json.loads(body)


def segment_line(doc_id_value: int, doc: dict) -> bytes:
    return b"%d\t%s\n" % (doc_id_value, dumps(doc))


def read_segment_doc(handle: IO[bytes], offset: int) -> dict:
    handle.seek(offset)
    _, _, body = handle.readline().partition(b"\t")
    return json.loads(body)


def reject_line(stage: str, reason: str, source: str, doc: dict, **extra: object) -> bytes:
    record = {"stage": stage, "reason": reason, "source": source, **extra, "doc": doc}
    return dumps(record) + b"\n"


def malformed_line(item: Item, source: str) -> bytes:
    raw = item.raw or b""
    record = {
        "stage": "input",
        "reason": item.reason,
        "source": source,
        "message": item.message,
        "raw": raw[:MAX_RAW_CHARS].decode("utf-8", "replace"),
    }
    if item.reason == readers.INVALID_UTF8:
        record["raw_hex"] = raw[:MAX_RAW_CHARS].hex()
    return dumps(record) + b"\n"
