"""The optional gigatoken backend gives exactly the ids of Hugging Face `tokenizers`, and steps aside when
it cannot (a post-processor that adds BOS) or when told to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from megatron_llm.data.tokenizers.bpe_backend import ENV, GigatokenEncoder, gigatoken_encoder
from megatron_llm.data.tokenizers.tokenizer import HFTokenizer, load_tokenizer
from tests.unit.test_preprocess_corpus import multilingual_documents, stdlib_documents, train_tokenizer_dir


@pytest.fixture(scope="module")
def byte_bpe(tmp_path_factory):
    docs = stdlib_documents(400_000) + multilingual_documents(300)
    return load_tokenizer(train_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tok", "byte-bpe", docs, 2000))


def test_gigatoken_gives_the_ids_of_tokenizers(byte_bpe):
    encoder = gigatoken_encoder(byte_bpe._json, byte_bpe.backend)
    assert encoder is not None
    texts = stdlib_documents(1_500_000, skip=60) + multilingual_documents(500, seed=11)
    texts += ["<|endoftext|>", "a<|im_start|>b<|im_end|>", "\u00a0\u2028\u3000 x", "é" * 5000, "", "   "]
    ids, lengths = encoder.encode_flat(texts)
    expected = [encoding.ids for encoding in byte_bpe.backend.encode_batch(texts)]
    assert lengths.tolist() == [len(e) for e in expected]
    assert ids.tolist() == [i for e in expected for i in e]


def test_gigatoken_steps_aside_for_a_post_processor_and_on_request(byte_bpe, monkeypatch):
    document = json.loads(byte_bpe._json)
    document["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|pad|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<|pad|>": {"id": "<|pad|>", "ids": [1], "tokens": ["<|pad|>"]}},
    }
    with_bos = HFTokenizer(json.dumps(document), 0)
    assert gigatoken_encoder(with_bos._json, with_bos.backend) is None
    assert with_bos.encode("hi")[0] == 1
    monkeypatch.setenv(ENV, "tokenizers")
    assert gigatoken_encoder(byte_bpe._json, byte_bpe.backend) is None


def test_gigatoken_encoder_rebuilt_to_bound_memory_gives_the_same_ids(byte_bpe):
    texts = stdlib_documents(200_000, skip=90)
    once = GigatokenEncoder(byte_bpe._json).encode_flat(texts)
    rebuilt = GigatokenEncoder(byte_bpe._json, rebuild_chars=5_000)
    parts, encoders = [], []  # the encoders are kept alive so that their ids stay distinct
    for text in texts:  # one call per document, each past rebuild_chars
        parts.append(rebuilt.encode_flat([text]))
        encoders.append(rebuilt._encoder)
    assert len({id(encoder) for encoder in encoders}) > 1  # it was rebuilt
    assert np.concatenate([ids for ids, _ in parts]).tolist() == once[0].tolist()
    assert np.concatenate([lengths for _, lengths in parts]).tolist() == once[1].tolist()
