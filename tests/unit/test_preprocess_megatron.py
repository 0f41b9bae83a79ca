"""Given Megatron-LM's flags, preprocess-data produces Megatron-LM's ids, EOD and dtype; the fast
SentencePiece encoder gives exactly SentencePiece's ids."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from megatron_llm.data.shards import preprocess_command as preprocess
from megatron_llm.data.tokenizers.bpe_backend import ENV
from megatron_llm.data.tokenizers.sp_encoder import SentencePieceEncoder
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


def megatron_sentencepiece_ids(processor, text: str) -> list[int]:
    """Megatron-LM's SentencePieceTokenizer.tokenize, restated: cut at the earliest special token (the
    first-added wins a tie), encode the pieces between, each occurrence becomes its id."""
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


def preprocess_with_megatron_flags(tmp_path, docs: list, tokenizer_type: str, model, workers: int) -> None:
    """preprocess-data on `docs` with Megatron-LM's flags; writes tmp_path/out_text_document."""
    write_jsonl(tmp_path / "in.jsonl", docs)
    args = ["--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--tokenizer-type",
            tokenizer_type, "--tokenizer-model", model, "--append-eod", "--workers", workers]
    assert preprocess.main([str(a) for a in args]) == 0


def test_sentencepiece_tokenizer_flags_match_megatron(tmp_path, corpus, llama_like_model):
    import sentencepiece

    docs = corpus[:30] + TRICKY
    preprocess_with_megatron_flags(tmp_path, docs, "SentencePieceTokenizer", llama_like_model, 2)
    processor = sentencepiece.SentencePieceProcessor(model_file=llama_like_model)
    eod = processor.get_piece_size() + 2  # <CLS>, <SEP>, then <EOD>: the model has none of them
    documents = [[megatron_sentencepiece_ids(processor, doc)] for doc in docs]
    assert eod in documents[-8][0]
    write_megatron_reference(tmp_path / "ref", documents, eod, np.uint16)
    assert same_files(tmp_path / "out_text_document", tmp_path / "ref")


def test_gpt_sentencepiece_tokenizer_flags_match_megatron(tmp_path, corpus, llama_like_model):
    import sentencepiece

    docs = corpus[:30] + TRICKY
    preprocess_with_megatron_flags(tmp_path, docs, "GPTSentencePieceTokenizer", llama_like_model, 1)
    processor = sentencepiece.SentencePieceProcessor(model_file=llama_like_model)
    write_megatron_reference(tmp_path / "ref", [[processor.encode(d)] for d in docs], processor.eos_id(), np.uint16)
    assert same_files(tmp_path / "out_text_document", tmp_path / "ref")


def test_huggingface_tokenizer_flags_match_transformers(tmp_path, corpus):
    import transformers

    from megatron_llm.data.tokenizers.tokenizer import export_for_hf

    tokenizer_dir = train_tokenizer_dir(tmp_path / "tok", "byte-bpe", corpus[::2], vocab_size=600)
    export_for_hf(tokenizer_dir, tmp_path / "hf")
    docs = corpus[:30] + TRICKY + ["<|endoftext|> inside", "<|im_start|>user"]
    preprocess_with_megatron_flags(tmp_path, docs, "HuggingFaceTokenizer", tmp_path / "hf", 2)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    documents = [[hf(doc).input_ids] for doc in docs]
    write_megatron_reference(tmp_path / "ref", documents, hf.eos_token_id, np.uint16)
    assert same_files(tmp_path / "out_text_document", tmp_path / "ref")


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
    tokenizer = load_megatron_tokenizer("SentencePieceTokenizer", llama_like_model)
    assert (tokenizer.vocab_size, tokenizer.eod_id) == (size + 5, size + 2)  # CLS SEP EOD MASK PAD added
    assert tokenizer.bos_id == processor.bos_id() and tokenizer.pad_id == size + 4
    gpt = load_megatron_tokenizer("GPTSentencePieceTokenizer", llama_like_model)
    assert (gpt.vocab_size, gpt.eod_id) == (size, processor.eos_id())
    assert json.loads(json.dumps(gpt.manifest()))["kind"] == "sentencepiece"
