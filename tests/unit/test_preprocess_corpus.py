"""Corpus helpers shared by the preprocess/tokenizer tests, and tests of the input readers.

Test text is the Python standard library's own source (present on every machine) plus generated
multilingual documents; nothing is downloaded.
"""

from __future__ import annotations

import gzip
import json
import random
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from megatron_llm.data.readers import expand_inputs, iter_lines, iter_parquet_rows, iter_records
from megatron_llm.errors import UsageError

PHRASES = {
    "Latin": "the committee reviews the annual budget report while the quick brown fox jumps over a lazy dog",
    "Cyrillic": "комитет рассматривает годовой отчёт о бюджете пока быстрая лиса прыгает через ленивую собаку",
    "Greek": "η επιτροπή εξετάζει την ετήσια έκθεση προϋπολογισμού ενώ η γρήγορη αλεπού πηδά πάνω από τον σκύλο",
    "Thai": "คณะกรรมการกำลัง พิจารณา รายงาน งบประมาณ ประจำปี ขณะที่ สุนัขจิ้งจอก สีน้ำตาล กระโดด ข้าม สุนัข",
    "Han": "委员会 正在 审查 年度 预算 报告 敏捷的 棕色 狐狸 跳过 了 懒惰的 狗 天气 很好",
    "Myanmar": "ကော်မတီသည် နှစ်ပတ်လည် ဘတ်ဂျက် အစီရင်ခံစာကို စစ်ဆေးနေသည် မြန်ဆန်သော မြေခွေး ခုန်ကျော်သည်",
}


def stdlib_documents(max_bytes: int, skip: int = 0) -> list[str]:
    """Whole source files of the standard library, in sorted order, up to about max_bytes."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, total = [], 0
    for path in sorted(root.glob("*.py"))[skip:]:
        text = path.read_text(encoding="utf-8", errors="replace")
        docs.append(text)
        total += len(text.encode())
        if total >= max_bytes:
            break
    return docs


def multilingual_documents(count: int, seed: int = 0) -> list[str]:
    """Documents each in one script, with shuffled words, digits, punctuation and odd spacing."""
    rng = random.Random(seed)
    scripts = list(PHRASES)
    docs = []
    for index in range(count):
        words = PHRASES[scripts[index % len(scripts)]].split(" ")
        rng.shuffle(words)
        spaced = [word + rng.choice([" ", " ", " ", "  ", ", ", ".\n", "\t"]) for word in words]
        docs.append("".join(spaced) + f"{rng.randint(0, 10**6)}")
    return docs


def write_jsonl(path: Path, docs: list, key: str = "text") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        for doc in docs:
            stream.write(json.dumps({key: doc}, ensure_ascii=False) + "\n")
    return path


def write_megatron_reference(prefix: Path, documents: list[list[list[int]]], eod: int | None, dtype) -> None:
    """What Megatron-LM's preprocess_data.py writes through megatron-core's builder: documents are lists
    of per-sentence id lists; empty sentences are dropped and EOD ends a non-empty document."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
    for sentences in documents:
        ids, lengths = [], []
        for sentence in sentences:
            if sentence:
                ids += sentence
                lengths.append(len(sentence))
        if ids and eod is not None:
            ids.append(eod)
            lengths[-1] += 1
        builder.add_document(torch.tensor(ids, dtype=torch.int64), lengths)
    builder.finalize(f"{prefix}.idx")


def same_files(prefix_a, prefix_b) -> bool:
    return all(Path(f"{prefix_a}{s}").read_bytes() == Path(f"{prefix_b}{s}").read_bytes() for s in (".bin", ".idx"))


def test_expand_inputs_is_sorted_deduplicated_and_names_a_pattern_without_match(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "sub/c.jsonl.gz", "notes.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    files = expand_inputs([str(tmp_path / "*.jsonl"), str(tmp_path)])
    assert [p.relative_to(tmp_path).as_posix() for p in files] == ["a.jsonl", "b.jsonl", "sub/c.jsonl.gz"]
    with pytest.raises(UsageError, match=r"input '.*nothing\*\.jsonl' matches no file"):
        expand_inputs([str(tmp_path / "nothing*.jsonl")])


def test_compressed_parquet_and_text_inputs_read_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = ["first", "second line\nwith newline", "ünïcode ✓"]
    plain = write_jsonl(tmp_path / "d.jsonl", docs)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    pq.write_table(pa.table({"text": docs, "id": [1, 2, 3]}), tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.jsonl.gz", "d.jsonl.zst", "d.parquet"):
        assert [r.doc["text"] for r in iter_records(tmp_path / name)] == docs, name
    assert list(iter_parquet_rows(tmp_path / "d.parquet"))[2] == {"text": docs[2], "id": 3}
    (tmp_path / "t.txt").write_text("a\nb\n")
    assert list(iter_lines(tmp_path / "t.txt")) == [b"a", b"b"]
    assert [r.doc for r in iter_records(tmp_path / "t.txt", text_unit="line")] == [{"text": "a"}, {"text": "b"}]
    assert [r.doc for r in iter_records(tmp_path / "t.txt")] == [{"text": "a\nb\n"}]


def test_bad_records_carry_reason_line_and_message(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        b'{"text": "ok"}\n{"text": \n{"other": 1}\n{"text": "\xff"}\n{"text": "\\ud800"}\n\n[1]\n{"text": null}\n'
    )
    got = [(r.line, r.reason, r.message) for r in iter_records(path) if not r.ok]
    assert got == [
        (2, "bad_json", "invalid JSON: Expecting value (column 10)"),
        (3, "missing_key", "missing key 'text'"),
        (4, "invalid_utf8", "invalid UTF-8 at byte 10"),
        (5, "invalid_utf8", "invalid UTF-8 (lone surrogate escape in a JSON string)"),
        (6, "bad_json", "invalid JSON: blank line"),
        (7, "bad_json", "expected a JSON object, got list"),
        (8, "missing_key", "key 'text' is null"),
    ]


def test_reference_helpers_agree_with_megatron_core_reader(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    write_megatron_reference(tmp_path / "ref", [[[5, 6], [7]], [], [[8]]], eod=1, dtype=np.uint16)
    dataset = IndexedDataset(str(tmp_path / "ref"))
    assert [dataset[i].tolist() for i in range(len(dataset))] == [[5, 6], [7, 1], [8, 1]]
    assert dataset.document_indices.tolist() == [0, 2, 2, 3]


def train_tokenizer_dir(directory: Path, model_type: str, docs: list[str], vocab_size: int = 800) -> Path:
    """A tokenizer directory trained by our trainer (byte fallback for SentencePiece)."""
    from megatron_llm.data.tokenizers.trainers import save, train

    tokenizer = train(docs, model_type, vocab_size, ["<|im_start|>", "<|im_end|>"], model_type != "byte-bpe")
    return save(tokenizer, directory)
