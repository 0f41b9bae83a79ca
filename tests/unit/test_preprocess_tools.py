"""Plain-text inputs, inspect-data and merge-shards from the command line."""

from __future__ import annotations

import numpy as np
import pytest

from megatron_llm import cli
from megatron_llm.data.shards.indexed_writer import read_index
from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
from tests.unit.test_preprocess_corpus import multilingual_documents, train_tokenizer_dir


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tok", "bpe", multilingual_documents(300), 500)


def run(capsys, *args) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_directories_inspect_and_decode(tmp_path, capsys, tokenizer_dir):
    docs = multilingual_documents(12, seed=4)
    for index, doc in enumerate(docs):
        (tmp_path / "txt" / f"{index:02d}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "txt" / f"{index:02d}.txt").write_text(doc)
    code, out, err = run(capsys, "preprocess-data", "--input", tmp_path / "txt", "--output-prefix", tmp_path / "t",
                         "--tokenizer", tokenizer_dir, "--append-eod", "--workers", 1)
    assert code == 0, err
    tokenizer = load_tokenizer(tokenizer_dir)
    code, out, err = run(capsys, "inspect-data", tmp_path / "t_text_document", "--decode", 2, "--tokenizer",
                         tokenizer_dir, "--max-chars", 10_000)
    assert code == 0, err
    assert "documents    12" in out and "dtype        uint16" in out
    assert f"--- document 1 ({len(tokenizer.encode(docs[1])) + 1} tokens)\n{docs[1]}\n" in out
    code, out, _ = run(capsys, "preprocess-data", "--input", tmp_path / "txt", "--output-prefix", tmp_path / "l",
                       "--tokenizer", tokenizer_dir, "--text-unit", "line", "--workers", 1)
    assert read_index(tmp_path / "l_text_document").document_count == sum(d.count("\n") + 1 for d in docs)


def test_inspect_rejects_a_damaged_dataset(tmp_path, capsys, tokenizer_dir):
    (tmp_path / "a.jsonl").write_text('{"text": "some text here"}\n' * 5)
    run(capsys, "preprocess-data", "--input", tmp_path / "a.jsonl", "--output-prefix", tmp_path / "d", "--tokenizer",
        tokenizer_dir, "--workers", 1)
    prefix = tmp_path / "d_text_document"
    with open(f"{prefix}.bin", "ab") as stream:
        stream.write(b"\0\0")
    code, _, err = run(capsys, "inspect-data", prefix)
    assert code == 2 and "the index describes" in err
    (tmp_path / "junk.idx").write_bytes(b"not an index at all, not at all....")
    code, _, err = run(capsys, "inspect-data", tmp_path / "junk")
    assert code == 2 and "junk.idx: not a Megatron indexed dataset index (bad header)" in err


def test_merge_orders_shards_naturally_and_checks_inputs(tmp_path, capsys, tokenizer_dir):
    for shard in (10, 2, 1):
        (tmp_path / f"in{shard}.jsonl").write_text(f'{{"text": "shard {shard}"}}\n')
        run(capsys, "preprocess-data", "--input", tmp_path / f"in{shard}.jsonl", "--output-prefix",
            tmp_path / f"part_{shard}", "--tokenizer", tokenizer_dir, "--workers", 1)
    code, out, err = run(capsys, "merge-shards", "--inputs", tmp_path / "part_*", "--output-prefix", tmp_path / "all")
    assert code == 0, err
    index = read_index(tmp_path / "all_text_document")
    data = np.fromfile(tmp_path / "all_text_document.bin", dtype=index.dtype)
    tokenizer = load_tokenizer(tokenizer_dir)
    assert tokenizer.decode(data.tolist()) == "shard 1shard 2shard 10"
    code, _, err = run(capsys, "merge-shards", "--inputs", tmp_path / "nothing*", "--output-prefix", tmp_path / "x")
    assert code == 2 and "matches no file" in err
