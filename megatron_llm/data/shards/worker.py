"""The work done per chunk in a preprocess-data worker: parse records, tokenize in one batch, lay out sequences.

Sequence layout follows Megatron-LM's `preprocess_data.py`: a JSON string is one sequence, a JSON list of
strings is one sequence per non-empty string; with `--append-eod` the EOD id ends the document's last
sequence; a document with no tokens gets no sequence (and no EOD) but still a document-index entry.
Results travel back as numpy arrays in the output dtype, never as Python lists of ints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from megatron_llm.data.readers import INVALID_UTF8, check_doc, parse_line
from megatron_llm.data.shards.inputs import Chunk
from megatron_llm.data.tokenizers.tokenizer import Tokenizer
from megatron_llm.errors import UsageError


@dataclass(frozen=True)
class EncodeOptions:
    keys: tuple[str, ...]
    append_eod: bool
    dtype: str
    paths: tuple[str, ...]


@dataclass
class BadRecord:
    """A record that was not used; `line` is relative to the chunk unless `absolute`."""

    source: int
    line: int
    reason: str
    message: str
    absolute: bool = False


@dataclass
class KeyOutput:
    tokens: np.ndarray
    sequence_lengths: np.ndarray
    sequences_per_document: np.ndarray
    empty: int


@dataclass
class ChunkResult:
    lines: int = 0
    documents: int = 0
    bad: list[BadRecord] = field(default_factory=list)
    outputs: dict[str, KeyOutput] = field(default_factory=dict)


_STATE: dict = {}


def init_worker(tokenizer: Tokenizer, options: EncodeOptions) -> None:
    """Pool initializer: keep the tokenizer; one native thread per worker process."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _STATE["tokenizer"] = tokenizer
    _STATE["options"] = options


def init_worker_from_queue(queue) -> None:
    """Pool initializer when the pool starts before the tokenizer is ready: wait for (tokenizer, options)."""
    init_worker(*queue.get())


def encode_chunk(chunk: Chunk) -> ChunkResult:
    tokenizer: Tokenizer = _STATE["tokenizer"]
    options: EncodeOptions = _STATE["options"]
    result = ChunkResult()
    docs = _parse(chunk, options, result)
    result.documents = len(docs)
    for key in options.keys:
        result.outputs[key] = _encode_key([doc[key] for doc in docs], tokenizer, options)
    return result


def _parse(chunk: Chunk, options: EncodeOptions, result: ChunkResult) -> list[dict]:
    keys = options.keys
    docs: list[dict] = []
    bad = result.bad
    if chunk.kind == "jsonl":
        lines = _split_lines(chunk.data)
        result.lines = len(lines)
        for number, raw in enumerate(lines):
            doc, reason, message = parse_line(raw, keys)
            if reason is None:
                docs.append(doc)
            else:
                bad.append(BadRecord(chunk.source, number, reason, message))
    elif chunk.kind == "lines":
        lines = _split_lines(chunk.data)
        result.lines = len(lines)
        for number, raw in enumerate(lines):
            _append_text(raw, number, chunk.source, keys, docs, bad, absolute=False)
    elif chunk.kind == "textfile":
        result.lines = len(chunk.files)
        for source, raw in chunk.files:
            _append_text(raw, 0, source, keys, docs, bad, absolute=True)
    else:
        docs = _parse_parquet(chunk, options, result)
    return docs


def _split_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return lines


def _append_text(raw: bytes, number: int, source: int, keys, docs: list, bad: list, absolute: bool) -> None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1 if absolute else number
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1)
        bad.append(BadRecord(source, line, INVALID_UTF8, f"invalid UTF-8 at byte {column}", absolute))
        return
    docs.append(dict.fromkeys(keys, text))


def _parse_parquet(chunk: Chunk, options: EncodeOptions, result: ChunkResult) -> list[dict]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(options.paths[chunk.source])
    present = [key for key in options.keys if key in parquet.schema_arrow.names]
    table = parquet.read_row_group(chunk.row_group, columns=present)
    columns = {key: table.column(key).to_pylist() for key in present}
    rows = table.num_rows
    result.lines = rows
    docs = []
    for number in range(rows):
        doc = {key: values[number] for key, values in columns.items()}
        reason, message = check_doc(doc, options.keys)
        if reason is None:
            docs.append(doc)
        else:
            result.bad.append(BadRecord(chunk.source, number, reason, message))
    return docs


def _encode_key(values: list, tokenizer: Tokenizer, options: EncodeOptions) -> KeyOutput:
    """Tokens and index entries for one JSON key of a chunk's documents."""
    if all(type(value) is str for value in values):
        texts = values
        sentence_doc = np.arange(len(values), dtype=np.int64)
    else:
        texts, owners = [], []
        for number, value in enumerate(values):
            sentences = [value] if isinstance(value, str) else value
            texts += sentences
            owners += [number] * len(sentences)
        sentence_doc = np.asarray(owners, dtype=np.int64)
    ids, lengths = tokenizer.encode_flat(texts)
    kept = np.flatnonzero(lengths > 0)
    owner = sentence_doc[kept]
    sequence_lengths = lengths[kept]
    if options.append_eod and kept.size:
        last = np.append(owner[1:] != owner[:-1], True)
        ids = np.insert(ids, np.cumsum(lengths)[kept[last]], tokenizer.eod_id)
        sequence_lengths = sequence_lengths + last
    per_document = np.bincount(owner, minlength=len(values)).astype(np.int64)
    dtype = np.dtype(options.dtype)
    if ids.size and dtype == np.uint16 and (ids.min() < 0 or ids.max() > 0xFFFF):
        raise UsageError(f"token id {int(ids.max())} does not fit uint16 (the tokenizer's vocab_size is too small)")
    return KeyOutput(
        ids.astype(dtype),
        sequence_lengths.astype(np.int32),
        per_document,
        int(np.count_nonzero(per_document == 0)),
    )
