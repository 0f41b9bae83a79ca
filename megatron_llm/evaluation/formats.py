"""Standard benchmarks read from local files in their published layouts.

Each reader turns a file (or a directory of them) into plain records; `benchmarks.py` builds the prompts.
Layouts read (JSON Lines may be gzip-compressed, Parquet is what the Hugging Face hub serves):

- MMLU: Hugging Face `cais/mmlu` Parquet (`question, subject, choices, answer` with `answer` an index, under
  `<subject>/test-*.parquet` and `<subject>/dev-*.parquet`, or `all/...`), or the original release's CSV files
  without a header (`question, A, B, C, D, answer letter` in `test/<subject>_test.csv` and
  `dev/<subject>_dev.csv`).
- TruthfulQA (multiple choice): Hugging Face Parquet (`question, mc1_targets{choices, labels},
  mc2_targets{...}`) or the original `mc_task.json` (a list of `question, mc1_targets{answer: label}, ...`).
- HellaSwag: JSON Lines or Parquet with `ctx_a, ctx_b, activity_label, endings, label`.
- ARC: Hugging Face Parquet (`question, choices{text, label}, answerKey`) or the original JSON Lines
  (`question{stem, choices[{text, label}]}, answerKey`).
- GSM8K: JSON Lines or Parquet with `question, answer` (the answer ends in `#### <number>`).
- HumanEval: JSON Lines (`.jsonl.gz` as published) with `task_id, prompt, canonical_solution, test, entry_point`.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from megatron_llm.errors import UsageError

LETTERS = "ABCDEFGHIJ"
SPLIT_DEFAULTS = {"mmlu": "test", "truthfulqa": "validation", "hellaswag": "validation", "arc": "test",
                  "gsm8k": "test", "humaneval": "test"}


@dataclass
class Record:
    """One benchmark item as published, with where it came from (`file:line` or `file:row`)."""

    source: str
    fields: dict
    group: str = ""  # MMLU subject, ARC set; "" for single-group benchmarks
    extra: dict = field(default_factory=dict)


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_rows(path: Path) -> Iterator[tuple[str, dict]]:
    """(source, record) of a JSON Lines, JSON (a list), Parquet or CSV-with-header file."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        for row, record in enumerate(pq.read_table(path).to_pylist(), start=1):
            yield f"{path}:row {row}", record
    elif name.endswith(".jsonl"):
        with _open_text(path) as handle:
            for line, text in enumerate(handle, start=1):
                if text.strip():
                    try:
                        yield f"{path}:{line}", json.loads(text)
                    except json.JSONDecodeError as error:
                        raise UsageError(f"{path}:{line}: invalid JSON: {error.msg}") from error
    elif name.endswith(".json"):
        with _open_text(path) as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as error:
                raise UsageError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from error
        if not isinstance(data, list):
            raise UsageError(f"{path}: expected a JSON list of records")
        for row, record in enumerate(data, start=1):
            yield f"{path}:item {row}", record
    else:
        raise UsageError(f"{path}: unsupported file type (expected .jsonl, .jsonl.gz, .json or .parquet)")


def _files(path: Path, split: str, patterns: tuple[str, ...]) -> list[Path]:
    """Data files under `path` (a file is itself) whose name marks `split`, sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"--data {path}: no such file or directory")
    found = sorted({p for pattern in patterns for p in path.rglob(pattern.format(split=split)) if p.is_file()})
    if not found:
        raise UsageError(f"--data {path}: no {split} files ({', '.join(p.format(split=split) for p in patterns)})")
    return found


def _need(source: str, record: object, keys: tuple[str, ...]) -> dict:
    if not isinstance(record, dict):
        raise UsageError(f"{source}: expected an object, got {type(record).__name__}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise UsageError(f"{source}: missing field {missing[0]!r}")
    return record


# MMLU ------------------------------------------------------------------------------------------------------
_MMLU_PATTERNS = ("*{split}-*.parquet", "*{split}.parquet", "*_{split}.csv", "*{split}*.jsonl")


def _mmlu_csv(path: Path) -> Iterator[tuple[str, dict]]:
    subject = path.stem.rsplit("_", 1)[0]
    with open(path, encoding="utf-8", newline="") as handle:
        for line, row in enumerate(csv.reader(handle), start=1):
            if len(row) != 6 or row[5].strip() not in LETTERS[:4]:
                raise UsageError(f"{path}:{line}: expected question, A, B, C, D, answer letter (A-D)")
            yield f"{path}:{line}", {"question": row[0], "choices": row[1:5], "answer": LETTERS.index(row[5].strip()),
                                     "subject": subject}


def read_mmlu(path: Path, split: str) -> list[Record]:
    out = []
    for file in _files(path, split, _MMLU_PATTERNS):
        rows = _mmlu_csv(file) if file.suffix == ".csv" else read_rows(file)
        for source, record in rows:
            record = _need(source, record, ("question", "choices", "answer"))
            subject = record.get("subject") or file.parent.name
            choices, answer = record["choices"], record["answer"]
            if not isinstance(choices, list) or len(choices) < 2 or not isinstance(answer, int) or not (
                    0 <= answer < len(choices)):
                raise UsageError(f"{source}: 'choices' must be a list and 'answer' an index into it")
            out.append(Record(source, {"question": record["question"], "choices": [str(c) for c in choices],
                                       "answer": answer}, group=subject))
    return out


# TruthfulQA ------------------------------------------------------------------------------------------------
def _targets(source: str, value: object, name: str) -> tuple[list[str], list[int]]:
    if isinstance(value, dict) and "choices" in value and "labels" in value:
        return [str(c) for c in value["choices"]], [int(v) for v in value["labels"]]
    if isinstance(value, dict):  # the original release: {answer text: 0/1}
        return [str(k) for k in value], [int(v) for v in value.values()]
    raise UsageError(f"{source}: {name!r} must be {{choices, labels}} or {{answer: label}}")


def read_truthfulqa(path: Path, split: str) -> list[Record]:
    out = []
    for file in _files(path, split, ("*{split}-*.parquet", "*{split}.parquet", "mc_task.json", "*.jsonl")):
        for source, record in read_rows(file):
            record = _need(source, record, ("question", "mc1_targets", "mc2_targets"))
            mc1, mc2 = _targets(source, record["mc1_targets"], "mc1_targets"), _targets(
                source, record["mc2_targets"], "mc2_targets")
            if sum(mc1[1]) != 1 or not any(mc2[1]) or all(mc2[1]):
                raise UsageError(f"{source}: mc1 needs exactly one true answer, mc2 at least one true and one false")
            out.append(Record(source, {"question": record["question"], "mc1": mc1, "mc2": mc2}))
    return out


# HellaSwag -------------------------------------------------------------------------------------------------
def read_hellaswag(path: Path, split: str) -> list[Record]:
    out = []
    for file in _files(path, split, ("*{split}-*.parquet", "*{split}.parquet", "*{split}*.jsonl")):
        for source, record in read_rows(file):
            record = _need(source, record, ("ctx_a", "ctx_b", "activity_label", "endings", "label"))
            if record["label"] in ("", None):
                raise UsageError(f"{source}: no label (the published test split is unlabelled; use validation)")
            out.append(Record(source, record))
    return out


# ARC -------------------------------------------------------------------------------------------------------
def read_arc(path: Path, split: str) -> list[Record]:
    out = []
    original = "Dev" if split == "validation" else split.capitalize()  # ARC-Easy-{Train,Dev,Test}.jsonl
    patterns = ("*{split}-*.parquet", "*{split}.parquet", f"*-{original}.jsonl", "*{split}*.jsonl")
    for file in _files(path, split, patterns):
        group = file.parent.name if file.suffix == ".parquet" else file.stem.rsplit("-", 1)[0]
        for source, record in read_rows(file):
            record = _need(source, record, ("question", "answerKey"))
            question = record["question"]
            if isinstance(question, dict):  # original release: question{stem, choices[{text, label}]}
                texts = [c["text"] for c in question.get("choices", [])]
                labels = [c["label"] for c in question.get("choices", [])]
                question = question.get("stem", "")
            else:
                choices = _need(source, record, ("choices",))["choices"]
                texts, labels = list(choices.get("text", [])), list(choices.get("label", []))
            if record["answerKey"] not in labels:
                raise UsageError(f"{source}: answerKey {record['answerKey']!r} is not one of the labels {labels}")
            out.append(Record(source, {"question": question, "choices": texts,
                                       "answer": labels.index(record["answerKey"])}, group=group))
    return out


# GSM8K and HumanEval ---------------------------------------------------------------------------------------
_GSM_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def read_gsm8k(path: Path, split: str) -> list[Record]:
    out = []
    for file in _files(path, split, ("*{split}-*.parquet", "*{split}.parquet", "*{split}*.jsonl")):
        for source, record in read_rows(file):
            record = _need(source, record, ("question", "answer"))
            match = _GSM_ANSWER.search(record["answer"])
            if not match:
                raise UsageError(f"{source}: 'answer' does not end in '#### <number>'")
            out.append(Record(source, {"question": record["question"], "answer": record["answer"],
                                       "target": match.group(1).replace(",", "")}))
    return out


def read_humaneval(path: Path, split: str) -> list[Record]:
    out = []
    for file in _files(path, split, ("*.jsonl", "*.jsonl.gz", "*{split}-*.parquet")):
        for source, record in read_rows(file):
            out.append(Record(source, _need(source, record, ("task_id", "prompt", "test", "entry_point"))))
    return out


READERS = {"mmlu": read_mmlu, "truthfulqa": read_truthfulqa, "hellaswag": read_hellaswag, "arc": read_arc,
           "gsm8k": read_gsm8k, "humaneval": read_humaneval}


def read_benchmark(task: str, path: str | Path, split: str | None = None) -> list[Record]:
    """The records of `task` (a key of READERS) under `path`; UsageError when there are none."""
    if task not in READERS:
        raise UsageError(f"--task: unknown benchmark {task!r} (known: {', '.join(READERS)})")
    records = READERS[task](Path(path), split or SPLIT_DEFAULTS[task])
    if not records:
        raise UsageError(f"--data {path}: no {task} records")
    return records
