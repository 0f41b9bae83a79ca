"""Nothing is lost: malformed lines stop the run naming file and line (exit 2) or are skipped and counted;
the summary reconciles; output appears only when complete; the preprocessing path imports no torch."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from megatron_llm import cli
from megatron_llm.data.shards.indexed_writer import IndexedDatasetWriter
from tests.unit.test_preprocess_corpus import multilingual_documents, train_tokenizer_dir, write_jsonl

GOOD = b'{"text": "hello world"}\n'
CASES = [
    (b'{"text": "unterminated\n', "invalid JSON: Unterminated string starting at (column 10) [bad_json]"),
    (b'{"title": "no text"}\n', "missing key 'text' [missing_key]"),
    (b'{"text": "caf\xe9"}\n', "invalid UTF-8 at byte 13 [invalid_utf8]"),
    (b"\n", "invalid JSON: blank line [bad_json]"),
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return train_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tok", "byte-bpe", multilingual_documents(200), 400)


def preprocess(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["preprocess-data", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad, message", CASES)
def test_a_malformed_line_stops_the_run_naming_file_and_line(tmp_path, capsys, tokenizer_dir, bad, message):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD * 3 + bad + GOOD)
    code, out, err = preprocess(capsys, "--input", path, "--output-prefix", tmp_path / "o", "--tokenizer",
                                tokenizer_dir, "--workers", 1)
    assert code == 2
    assert err == (f"megatron-llm preprocess-data: error: {path}:4: {message}; "
                   "--on-error skip skips and counts such lines\n")
    assert sorted(os.listdir(tmp_path)) == ["in.jsonl"]


def test_skip_counts_by_reason_and_the_summary_reconciles(tmp_path, capsys, tokenizer_dir):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD + b"".join(bad for bad, _ in CASES) + b'{"text": ""}\n' + GOOD + b'{"text": "' + b"x" * 10)
    code, out, err = preprocess(capsys, "--input", path, "--output-prefix", tmp_path / "o", "--tokenizer",
                                tokenizer_dir, "--on-error", "skip", "--append-eod", "--workers", 2)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1:4] == [
        "  lines read        8",
        "  documents written 3",
        "  skipped           5 (bad_json 3, missing_key 1, invalid_utf8 1)",
    ]
    assert lines[4].endswith("empty documents 1")
    from megatron_llm.data.shards.indexed_writer import read_index

    assert read_index(tmp_path / "o_text_document").document_count == 3


def test_error_in_a_shard_that_starts_mid_file_names_the_true_line(tmp_path, capsys, tokenizer_dir):
    path = tmp_path / "in.jsonl"
    path.write_bytes(GOOD * 50 + b"{broken\n" + GOOD * 9)
    code, _, err = preprocess(capsys, "--input", path, "--output-prefix", tmp_path / "o", "--tokenizer",
                              tokenizer_dir, "--shard-index", 1, "--num-shards", 2, "--workers", 1)
    assert code == 2 and f"{path}:51: invalid JSON" in err


def test_megatron_flags_errors_exit_2(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", ["a"])
    code, _, err = preprocess(capsys, "--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "o",
                              "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tmp_path / "none")
    assert code == 2 and "--tokenizer-model" in err and "no such file" in err
    code, _, err = preprocess(capsys, "--input", tmp_path / "missing*.jsonl", "--output-prefix", tmp_path / "o",
                              "--tokenizer", tmp_path)
    assert code == 2 and "not a tokenizer directory" in err


def test_interrupted_writes_never_leave_a_valid_looking_pair(tmp_path, monkeypatch):
    prefix = tmp_path / "d"
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(np.arange(5), np.array([5]), np.array([1]))
        writer.finish()
    old_idx = (tmp_path / "d.idx").read_bytes()
    with pytest.raises(KeyboardInterrupt), IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(np.arange(3), np.array([3]), np.array([1]))
        raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == ["d.bin", "d.idx", "d.stats.json"]
    assert (tmp_path / "d.idx").read_bytes() == old_idx
    real_replace, calls = os.replace, []

    def dies_before_the_index(source, target):
        calls.append(target)
        if str(target).endswith(".idx"):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", dies_before_the_index)
    with pytest.raises(KeyboardInterrupt), IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(np.arange(3), np.array([3]), np.array([1]))
        writer.finish()
    assert not (tmp_path / "d.idx").exists() and [str(c)[-4:] for c in calls] == [".bin", ".idx"]
    assert sorted(os.listdir(tmp_path)) == ["d.bin"]


@pytest.mark.parametrize("megatron_flags", [False, True])
def test_preprocessing_imports_neither_torch_nor_megatron(tmp_path, tokenizer_dir, megatron_flags):
    """Also with Megatron-LM's HuggingFaceTokenizer flags, where transformers loads the directory (in a
    helper process that hides torch; test_preprocess_megatron compares its ids with transformers')."""
    from megatron_llm.data.tokenizers.tokenizer import export_for_hf

    write_jsonl(tmp_path / "in.jsonl", multilingual_documents(20))
    tokenizer = ["--tokenizer", str(tokenizer_dir)]
    if megatron_flags:
        export_for_hf(tokenizer_dir, tmp_path / "hf")
        tokenizer = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(tmp_path / "hf")]
    script = (
        "import sys; from megatron_llm import cli\n"
        f"code = cli.main(['preprocess-data', '--input', {str(tmp_path / 'in.jsonl')!r}, '--output-prefix',"
        f" {str(tmp_path / 'o')!r}, *{tokenizer!r}, '--workers', '2'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')"
        " or m.startswith('megatron.core'))\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "0 []"
