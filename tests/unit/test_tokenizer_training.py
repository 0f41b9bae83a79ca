"""train-tokenizer: several scripts round-trip, the fertility report shows each script next to a
baseline, the directory format is validated, and export_for_hf gives transformers the same ids."""

from __future__ import annotations

import json

import pytest

from megatron_llm import cli
from megatron_llm.data.tokenizers.sample import parse_size, sample_corpus
from megatron_llm.data.tokenizers.tokenizer import export_for_hf, load_tokenizer
from megatron_llm.errors import UsageError
from tests.unit.test_preprocess_corpus import PHRASES, multilingual_documents, stdlib_documents, write_jsonl

SAMPLES = ["Grüße aus Köln 😀", "Съешь ещё  этих булок", "ภาษาไทย ง่าย", "中文，日本語のテキスト", "မြန်မာ",
           "    def f(x):\n\treturn x  # tab\r\n", "x<|im_start|>user\nhi<|im_end|>", " leading", "", "a\u00a0\u3000b"]


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    docs = multilingual_documents(900, seed=1) + stdlib_documents(200_000)
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "c.jsonl", docs)


def train(tmp_path, capsys, corpus_file, model_type, vocab, *extra):
    args = ["train-tokenizer", "--input", str(corpus_file), "--model-type", model_type, "--vocab-size", str(vocab),
            "--output", str(tmp_path / model_type), "--special-tokens", "<|im_start|>", "<|im_end|>", *extra]
    assert cli.main(args) == 0, capsys.readouterr().err
    return tmp_path / model_type, capsys.readouterr().out


@pytest.mark.parametrize("model_type, extra", [("byte-bpe", []), ("bpe", ["--byte-fallback"])])
def test_multiscript_round_trip_and_fertility_report(tmp_path, capsys, corpus_file, model_type, extra):
    baseline, _ = train(tmp_path / "base", capsys, corpus_file, "byte-bpe", 300)
    directory, out = train(tmp_path, capsys, corpus_file, model_type, 1200, *extra, "--report", "--baseline",
                           str(baseline), "--heldout-percent", "10")
    tokenizer = load_tokenizer(directory)
    for text in SAMPLES + multilingual_documents(30, seed=9):
        assert tokenizer.decode(tokenizer.encode(text)) == text
    report = json.loads((directory / "fertility_report.json").read_text())
    assert set(PHRASES) <= set(report["scripts"])
    for script in PHRASES:
        row = report["scripts"][script]
        assert row["tokens"]["ours"] < row["tokens"]["baseline"], script
        assert any(line.startswith(script) for line in out.splitlines())
    assert "baseline/ours" in out and "tok/word" in out and "tok/byte" in out
    manifest = json.loads((directory / "megatron_llm_tokenizer.json").read_text())
    assert manifest["vocab_size"] == 1200 and manifest["special_tokens"][-2:] == ["<|im_start|>", "<|im_end|>"]
    assert tokenizer.encode("<|im_start|>") == [manifest["special_tokens"].index("<|im_start|>")]


@pytest.mark.parametrize("model_type, vocab, extra", [("byte-bpe", 800, []), ("bpe", 800, ["--byte-fallback"]),
                                                      ("unigram", 800, [])])
def test_export_for_hf_gives_transformers_the_same_ids(tmp_path, capsys, corpus_file, model_type, vocab, extra):
    import transformers

    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}")
    directory, _ = train(tmp_path, capsys, corpus_file, model_type, vocab, *extra, "--chat-template", str(template))
    ours = load_tokenizer(directory)
    export_for_hf(directory, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    texts = SAMPLES + multilingual_documents(60, seed=5) + stdlib_documents(30_000, skip=100)
    assert [hf(text).input_ids for text in texts] == ours.encode_batch(texts)
    assert (hf.eos_token_id, hf.pad_token_id, len(hf)) == (ours.eod_id, ours.pad_id, ours.vocab_size)
    chat = hf.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>hi<|im_end|>" and ours.chat_template == template.read_text()


def test_sample_is_bounded_deterministic_and_keeps_heldout_apart():
    from megatron_llm.data.readers import Record

    records = [Record("f", i, {"text": f"document number {i} " * (i % 7 + 1)}) for i in range(2000)]
    first = sample_corpus(records, "text", budget=20_000, heldout_percent=5)
    again = sample_corpus(records, "text", budget=20_000, heldout_percent=5)
    assert first.train == again.train and first.heldout == again.heldout
    assert 19_000 < first.sampled_bytes <= 20_000 and first.documents == 2000
    assert not set(first.train) & set(first.heldout) and 60 < len(first.heldout) < 140
    assert parse_size("2G") == 2 << 30 and parse_size("500M") == 500 << 20 and parse_size("1000") == 1000
    with pytest.raises(UsageError, match="--sample-bytes"):
        parse_size("lots")


def test_manifest_errors_name_the_field(tmp_path, capsys, corpus_file):
    directory, _ = train(tmp_path, capsys, corpus_file, "byte-bpe", 400)
    manifest_path = directory / "megatron_llm_tokenizer.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "eod_id": "two"}))
    with pytest.raises(UsageError, match=r"megatron_llm_tokenizer.json: eod_id: expected a non-negative integer"):
        load_tokenizer(directory)
    manifest_path.write_text(json.dumps({**manifest, "kind": "wordpiece"}))
    with pytest.raises(UsageError, match=r"kind: expected one of sentencepiece, hf, got 'wordpiece'"):
        load_tokenizer(directory)
    assert cli.main(["train-tokenizer", "--input", str(corpus_file), "--model-type", "byte-bpe", "--vocab-size",
                     "100", "--output", str(tmp_path / "x")]) == 2
    assert "byte-bpe needs at least 256" in capsys.readouterr().err
