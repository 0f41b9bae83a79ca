"""Given Megatron-LM's flags, preprocess-data writes Megatron-LM 0.16.1's files: the reference ids, EOD and
vocabulary size come from megatron-core's own tokenizers (`megatron.core.tokenizers`, what Megatron-LM's
preprocess_data.py builds by default), run in a separate process; with --legacy-tokenizer, those of its legacy
system (through sentencepiece and transformers). The fast SentencePiece encoder gives exactly SentencePiece's ids."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_llm.data.shards import preprocess_command as preprocess
from megatron_llm.data.tokenizers.bpe_backend import ENV
from megatron_llm.data.tokenizers.sp_encoder import SentencePieceEncoder
from megatron_llm.errors import UsageError
from tests.unit.test_preprocess_corpus import (
    multilingual_documents,
    same_files,
    stdlib_documents,
    train_tokenizer_dir,
    write_jsonl,
    write_megatron_reference,
)

TRICKY = ["<s>x</s>", "a<EOD>b<CLS><SEP>", "<MASK><MASK>", "<PAD><unk>", "  lead", "tail  ", "", "▁raw▁", "ﬁ\u00a0x"]


@pytest.fixture(scope="module")
def corpus():
    return stdlib_documents(300_000, skip=40) + multilingual_documents(60, seed=3)


def train_sentencepiece(path, corpus, **options) -> str:
    import sentencepiece

    settings = {"model_type": "bpe", "vocab_size": 700, "byte_fallback": True, "minloglevel": 2, "num_threads": 2}
    settings.update(options)
    lines = (line for doc in corpus for line in doc.split("\n") if line.strip())
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=lines, model_prefix=str(path), **settings)
    return f"{path}.model"


@pytest.fixture(scope="module")
def llama_like_model(tmp_path_factory, corpus):
    """A model with SentencePiece's default normalization (nmt_nfkc) and dummy prefix, like Llama 2's."""
    return train_sentencepiece(tmp_path_factory.mktemp("sp") / "m", corpus)


# Text that holds the special-token strings each tokenizer system treats in its own way.
SPECIAL_TEXT = ["<s>x</s>", "a <EOD> b <unk> c", "</s>", "<|endoftext|> inside", " <|endoftext|>x<|endoftext|>",
                "<|im_start|>user\nhi<|im_end|>", "<CLS> <MASK>z"]
GPT2_REVISION = "0" * 40


def megatron_legacy_sentencepiece_ids(processor, text: str) -> list[int]:
    """Megatron-LM's legacy (megatron.training.tokenizer) SentencePieceTokenizer.tokenize, restated from its
    source because Megatron-LM itself is not installed (megatron-core does not ship the legacy system): cut
    at the earliest special token (the first-added wins a tie), encode the pieces between, each occurrence
    becomes its id."""
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    specials = {}
    pieces = ["<CLS>", "<SEP>", "<EOD>", "<MASK>"]
    for method, fallback in (("pad_id", "<PAD>"), ("bos_id", "<BOS>"), ("eos_id", "<EOS>")):
        piece_id = getattr(processor, method)()
        pieces.append(processor.id_to_piece(piece_id) if piece_id >= 0 else fallback)
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
        specials.setdefault(piece, vocab[piece])
    ids, position = [], 0
    while True:
        found = [(text.find(token, position), order, token) for order, token in enumerate(specials)]
        found = [item for item in found if item[0] >= 0]
        if not found:
            return ids + processor.encode(text[position:])
        start, _, token = min(found)
        ids += processor.encode(text[position:start]) + [specials[token]]
        position = start + len(token)


def preprocess_with_megatron_flags(out_dir, docs: list, flags: list, workers: int = 1, legacy: bool = False) -> Path:
    """preprocess-data on `docs` with Megatron-LM's flags; returns the output prefix (…/out_text_document)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / "in.jsonl", docs)
    args = ["--input", out_dir / "in.jsonl", "--output-prefix", out_dir / "out", *flags, "--append-eod",
            "--workers", workers] + ["--legacy-tokenizer"] * legacy
    assert preprocess.main([str(a) for a in args]) == 0
    return out_dir / "out_text_document"


def megatron_dtype(vocab_size: int):
    from megatron.core.datasets.indexed_dataset import DType

    return DType.optimal_dtype(vocab_size)


@pytest.fixture(scope="module")
def docs(corpus):
    return corpus[:30] + TRICKY + SPECIAL_TEXT


@pytest.fixture(scope="module")
def tokenizer_files(tmp_path_factory, corpus, llama_like_model):
    """The files each --tokenizer-type reads: a SentencePiece model; a Hugging Face directory whose
    post-processor adds BOS (as Llama's does); a GPT-2 vocab.json/merges.txt pair from a byte-level BPE we
    train, also placed in an offline hub cache as the `gpt2` model, which Megatron-LM's default GPT2BPETokenizer
    loads (it takes the merges from there)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers.processors import TemplateProcessing

    from megatron_llm.data.tokenizers.tokenizer import export_for_hf

    root = tmp_path_factory.mktemp("megatron_tokenizers")
    hf = export_for_hf(train_tokenizer_dir(root / "sp_dir", "bpe", corpus[::2], vocab_size=600), root / "hf")
    backend = Backend.from_file(str(hf / "tokenizer.json"))
    backend.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", backend.token_to_id("<s>"))])
    backend.save(str(hf / "tokenizer.json"))
    byte_bpe = json.loads((train_tokenizer_dir(root / "bb", "byte-bpe", corpus[1::2], 600) / "tokenizer.json")
                          .read_text())
    vocab = {**byte_bpe["model"]["vocab"], **{t["content"]: t["id"] for t in byte_bpe["added_tokens"]}}
    merges = ["#version: 0.2"] + [" ".join(pair) for pair in byte_bpe["model"]["merges"]]
    snapshot = root / "hub/models--gpt2/snapshots" / GPT2_REVISION
    snapshot.mkdir(parents=True)
    (root / "hub/models--gpt2/refs").mkdir()
    (root / "hub/models--gpt2/refs/main").write_text(GPT2_REVISION)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (snapshot / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (snapshot / "merges.txt").write_text("\n".join(merges) + "\n")
    flags = {
        "SentencePieceTokenizer": {"tokenizer_model": llama_like_model},
        "GPTSentencePieceTokenizer": {"tokenizer_model": llama_like_model},
        "HuggingFaceTokenizer": {"tokenizer_model": str(hf)},
        "GPT2BPETokenizer": {"vocab_file": str(snapshot / "vocab.json"), "merge_file": str(snapshot / "merges.txt")},
    }
    return {"root": root, "hub": root / "hub", "flags": {k: {"tokenizer_type": k, **v} for k, v in flags.items()}}


@pytest.fixture(scope="module")
def megatron(tokenizer_files, docs):
    """Ids, EOD and vocabulary size from megatron-core's own tokenizers (a separate process, offline hub)."""
    root = tokenizer_files["root"]
    (root / "spec.json").write_text(json.dumps({"texts": docs, "tokenizers": tokenizer_files["flags"]}))
    env = {**os.environ, "HF_HUB_CACHE": str(tokenizer_files["hub"]), "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", "TRANSFORMERS_VERBOSITY": "error"}
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "megatron_tokenizer_worker.py"),
                             str(root / "spec.json"), str(root / "ref.json")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "ref.json").read_text())


def cli_flags(flags: dict) -> list[str]:
    return [x for key, value in flags.items() for x in (f"--{key.replace('_', '-')}", value)]


def legacy_reference(tokenizer_type: str, files: dict, docs: list) -> tuple[list, int]:
    """(ids per document, EOD) of Megatron-LM's --legacy-tokenizer, from sentencepiece and transformers (and
    the restated legacy SentencePieceTokenizer, which megatron-core does not ship)."""
    import sentencepiece
    import transformers

    flags = files["flags"][tokenizer_type]
    if tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        processor = sentencepiece.SentencePieceProcessor(model_file=flags["tokenizer_model"])
        if tokenizer_type == "GPTSentencePieceTokenizer":
            return [processor.encode(doc) for doc in docs], processor.eos_id()
        return [megatron_legacy_sentencepiece_ids(processor, doc) for doc in docs], processor.get_piece_size() + 2
    if tokenizer_type == "HuggingFaceTokenizer":
        hf = transformers.AutoTokenizer.from_pretrained(flags["tokenizer_model"])
        return [hf(doc).input_ids for doc in docs], hf.eos_token_id
    gpt2 = transformers.GPT2Tokenizer(flags["vocab_file"], flags["merge_file"])
    return [gpt2(doc, split_special_tokens=True).input_ids for doc in docs], gpt2.eos_token_id


# What each tokenizer's legacy and default systems disagree on, in these documents (None: nothing).
LEGACY_DIFFERS = {"SentencePieceTokenizer": "EOD id and the split at <s>, </s>, <EOD>, <CLS>, <MASK>",
                  "GPTSentencePieceTokenizer": None,
                  "HuggingFaceTokenizer": "the post-processor's BOS",
                  "GPT2BPETokenizer": "<|endoftext|> written in the text"}


@pytest.mark.parametrize("tokenizer_type", list(LEGACY_DIFFERS))
def test_megatron_flags_write_megatron_lms_files(tmp_path, docs, tokenizer_files, megatron, tokenizer_type):
    """Default: the files Megatron-LM 0.16.1 writes (ids, EOD and dtype from megatron-core's tokenizer);
    --legacy-tokenizer: those of its legacy tokenizers. Where the two systems disagree on this text, each
    output differs from the other system's reference: comparing against the wrong one would fail."""
    reference = megatron[tokenizer_type]
    dtype = megatron_dtype(reference["vocab_size"])
    write_megatron_reference(tmp_path / "ref", [[ids] for ids in reference["ids"]], reference["eod"], dtype)
    flags = cli_flags({k: v for k, v in tokenizer_files["flags"][tokenizer_type].items()})
    workers = 2 if tokenizer_type == "SentencePieceTokenizer" else 1
    out = preprocess_with_megatron_flags(tmp_path / "default", docs, flags, workers)
    assert same_files(out, tmp_path / "ref")

    legacy_ids, legacy_eod = legacy_reference(tokenizer_type, tokenizer_files, docs)
    legacy_vocab = reference["vocab_size"] + (5 if tokenizer_type == "SentencePieceTokenizer" else 0)
    write_megatron_reference(tmp_path / "legacy_ref", [[ids] for ids in legacy_ids], legacy_eod,
                             megatron_dtype(legacy_vocab))
    legacy = preprocess_with_megatron_flags(tmp_path / "legacy", docs, flags, 1, legacy=True)
    assert same_files(legacy, tmp_path / "legacy_ref")
    if LEGACY_DIFFERS[tokenizer_type] is None:
        assert same_files(legacy, out)
    else:
        assert not same_files(legacy, out), LEGACY_DIFFERS[tokenizer_type]
        differing = sum(a != b for a, b in zip(legacy_ids, reference["ids"], strict=True))
        assert differing >= 1


def test_sentencepiece_default_ends_documents_with_the_models_eos(megatron, llama_like_model):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=llama_like_model)
    assert megatron["SentencePieceTokenizer"]["eod"] == processor.eos_id() == 2
    assert megatron["SentencePieceTokenizer"]["vocab_size"] == processor.get_piece_size()


def test_saved_tokenizer_gives_the_trainer_megatrons_eod(tmp_path, docs, tokenizer_files, megatron):
    """Shards made with Megatron-LM's flags, trained on through --save-tokenizer: the trainer's EOD id, and so
    the positions eod_mask_loss drops, are those of Megatron-LM's tokenizer."""
    from megatron_llm.config import load_config
    from megatron_llm.training.data import build_datasets, tokenizer_info
    from tests.distributed.ckpt_runs import TINY

    reference = megatron["SentencePieceTokenizer"]
    flags = cli_flags(tokenizer_files["flags"]["SentencePieceTokenizer"]) + ["--save-tokenizer", tmp_path / "tok"]
    prefix = preprocess_with_megatron_flags(tmp_path / "run", docs, flags)
    config = load_config(TINY, [f"data.paths=[{prefix}]", f"data.tokenizer={tmp_path / 'tok'}",
                                "data.eod_mask_loss=true", "data.seq_length=32", "data.split=100,0,0",
                                "schedule.eval_iters=0",
                                f"data.cache_dir={tmp_path / 'cache'}"])
    config.model.vocab_size = None
    info = tokenizer_info(config)
    assert (info.eod, info.vocab_size) == (reference["eod"], reference["vocab_size"])
    train, _ = build_datasets(config, 4, info)
    masked = eods = 0
    for index in range(len(train)):
        sample = train[index]
        is_eod = np.asarray(sample["tokens"]) == reference["eod"]
        assert np.array_equal(np.asarray(sample["loss_mask"]) == 0, is_eod)
        masked, eods = masked + int((np.asarray(sample["loss_mask"]) == 0).sum()), eods + int(is_eod.sum())
    assert masked == eods > 0
    # The legacy system's EOD (the added <EOD>) is another id: a trainer using it would mask nothing here.
    legacy_eod = reference["vocab_size"] + 2
    assert not any((np.asarray(train[i]["tokens"]) == legacy_eod).any() for i in range(len(train)))
    with pytest.raises(UsageError, match="legacy SentencePieceTokenizer"):
        preprocess_with_megatron_flags(tmp_path / "legacy", docs, flags, legacy=True)


def fuzz_texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    alphabet = [" ", "  ", "    ", "a", "the", "de", "\t", "\n", "\u00a0", "\u3000", "▁", "é", "e\u0301", "ﬁ", "😀",
                "<s>", "ab ", " x", "12", "ไทย", "中文", "\r", "\u2028", "==", "\\"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(count)]


@pytest.mark.parametrize(
    "options, mode",
    [
        ({}, "gigatoken"),
        ({"normalization_rule_name": "identity", "remove_extra_whitespaces": False,
          "allow_whitespace_only_pieces": True}, "gigatoken"),
        ({"normalization_rule_name": "identity", "remove_extra_whitespaces": False, "add_dummy_prefix": False,
          "allow_whitespace_only_pieces": True}, "gigatoken"),
        ({"normalization_rule_name": "identity", "remove_extra_whitespaces": False, "add_dummy_prefix": False},
         "gigatoken"),
        ({"user_defined_symbols": ["<|im_start|>", "@@", "<tool>", "é"], "character_coverage": 0.98}, "gigatoken"),
        ({"byte_fallback": False, "vocab_size": 500}, "words"),
        ({"model_type": "unigram", "vocab_size": 500}, "plain"),
        ({"treat_whitespace_as_suffix": True}, "plain"),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_fast_sentencepiece_encoder_gives_sentencepiece_ids(tmp_path, corpus, options, mode, backend, monkeypatch):
    """Every encoder path (gigatoken, per-word cache, SentencePiece itself) against SentencePiece, on held-out
    multilingual text with characters outside the vocabulary and fuzzed whitespace, marks and specials."""
    import sentencepiece

    monkeypatch.setenv(ENV, backend)
    model = train_sentencepiece(tmp_path / "m", corpus[::2], **options)
    proto = open(model, "rb").read()
    encoder = SentencePieceEncoder(proto, cache_entries=2000)
    expected_mode = "words" if mode == "gigatoken" and backend == "reference" else mode
    assert encoder.mode == expected_mode
    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    texts = corpus[1::2] + fuzz_texts(len(options), 3000)
    texts += [f"x{token}y{token}{token[:-1]} {token}" for token in options.get("user_defined_symbols", [])]
    got = []
    for start in range(0, len(texts), 97):
        got += encoder.encode_batch(texts[start : start + 97])
    assert got == processor.encode(texts)
    assert encoder.encode_batch(["a\x00b", "\x01"]) == processor.encode(["a\x00b", "\x01"])


def test_gigatoken_when_required_but_not_applicable_is_an_error(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv(ENV, "gigatoken")
    proto = open(train_sentencepiece(tmp_path / "m", corpus[::4], byte_fallback=False, vocab_size=500), "rb").read()
    with pytest.raises(RuntimeError, match="not a byte-fallback BPE"):
        SentencePieceEncoder(proto).encode_flat(["x"])


def test_identity_normalization_shortcut_matches_sentencepiece(tmp_path, corpus):
    import sentencepiece

    for dummy in (True, False):
        model = train_sentencepiece(tmp_path / f"m{dummy}", corpus[::4], normalization_rule_name="identity",
                                    remove_extra_whitespaces=False, add_dummy_prefix=dummy)
        proto = open(model, "rb").read()
        encoder = SentencePieceEncoder(proto)
        processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        texts = fuzz_texts(7, 2000)
        assert encoder._normalize(texts) == [processor.normalize(text) for text in texts]


def test_megatron_tokenizer_manifest_values(llama_like_model):
    import sentencepiece

    from megatron_llm.data.tokenizers.megatron_flags import load_megatron_tokenizer

    processor = sentencepiece.SentencePieceProcessor(model_file=llama_like_model)
    size = processor.get_piece_size()
    legacy = load_megatron_tokenizer("SentencePieceTokenizer", llama_like_model, legacy=True)
    assert (legacy.vocab_size, legacy.eod_id) == (size + 5, size + 2)  # CLS SEP EOD MASK PAD added
    assert legacy.bos_id == processor.bos_id() and legacy.pad_id == size + 4
    for tokenizer_type in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        tokenizer = load_megatron_tokenizer(tokenizer_type, llama_like_model)
        assert (tokenizer.vocab_size, tokenizer.eod_id) == (size, processor.eos_id())
        assert json.loads(json.dumps(tokenizer.manifest()))["kind"] == "sentencepiece"
