"""preprocess-data writes exactly what megatron-core's builder writes for the same ids, and megatron-core
reads it back; sharding + merge-shards and the worker count do not change a byte."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from megatron_llm.data.shards import merge_command as merge
from megatron_llm.data.shards import preprocess_command as preprocess
from tests.unit.test_preprocess_corpus import (
    multilingual_documents,
    same_files,
    stdlib_documents,
    train_tokenizer_dir,
    write_jsonl,
    write_megatron_reference,
)


@pytest.fixture(scope="module")
def corpus():
    return stdlib_documents(600_000) + multilingual_documents(120)


@pytest.fixture(scope="module", params=["bpe", "byte-bpe"])
def tokenizer_dir(request, tmp_path_factory, corpus):
    return train_tokenizer_dir(tmp_path_factory.mktemp(request.param) / "tok", request.param, corpus[::3])


def reference_ids(tokenizer_dir, texts: list[str]) -> list[list[int]]:
    """Ids straight from the tokenizer libraries, not through our encoders."""
    manifest = json.loads((tokenizer_dir / "megatron_llm_tokenizer.json").read_text())
    if manifest["kind"] == "sentencepiece":
        import sentencepiece

        processor = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer_dir / "tokenizer.model"))
        return [processor.encode(text) for text in texts]
    import tokenizers

    backend = tokenizers.Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    return [backend.encode(text).ids for text in texts]


def run_preprocess(*args) -> None:
    assert preprocess.main([str(a) for a in args]) == 0


def test_bytes_equal_megatron_core_builder_and_megatron_core_reads_them(tmp_path, corpus, tokenizer_dir):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    docs = corpus[:40] + ["", "  ", "x<|im_start|>y"] + corpus[40:80]
    lines = [{"text": doc} for doc in docs] + [{"text": ["first sentence.", "", "second one"]}, {"text": []}]
    with open(tmp_path / "in.jsonl", "w") as stream:
        stream.writelines(json.dumps(line) + "\n" for line in lines)
    run_preprocess("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "out", "--tokenizer",
                   tokenizer_dir, "--append-eod", "--workers", 2)
    manifest = json.loads((tokenizer_dir / "megatron_llm_tokenizer.json").read_text())
    documents = [[ids] for ids in reference_ids(tokenizer_dir, docs)]
    documents += [reference_ids(tokenizer_dir, ["first sentence.", "", "second one"]), []]
    dtype = np.uint16 if manifest["vocab_size"] < 65500 else np.int32
    write_megatron_reference(tmp_path / "ref", documents, manifest["eod_id"], dtype)
    assert same_files(tmp_path / "out_text_document", tmp_path / "ref")
    dataset = IndexedDataset(str(tmp_path / "out_text_document"))
    assert dataset.index.dtype == np.uint16
    assert len(dataset.document_indices) - 1 == len(lines)
    assert dataset[0].tolist() == documents[0][0] + [manifest["eod_id"]]


def test_gpt_dataset_builder_reads_the_shards(tmp_path, corpus, tokenizer_dir):
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig

    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

    write_jsonl(tmp_path / "in.jsonl", corpus[:60])
    run_preprocess("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "c", "--tokenizer",
                   tokenizer_dir, "--append-eod", "--workers", 1)
    tokenizer = load_tokenizer(tokenizer_dir)

    class MegatronView:
        """The attributes megatron-core's datasets read from a tokenizer."""

        unique_identifiers = {"class": "test"}
        vocab_size, eod, pad = tokenizer.vocab_size, tokenizer.eod_id, -1

    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=64, blend=([str(tmp_path / "c_text_document")], None), split="90,10,0",
        tokenizer=MegatronView(), reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        path_to_cache=str(tmp_path / "cache"),
    )
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, [50, 5, 0], lambda: True, config).build()
    sample = train[0]
    assert sample["tokens"].shape == (64,) and len(train) >= 50 and len(valid) >= 5
    assert int(sample["tokens"].max()) < tokenizer.vocab_size
    assert (sample["labels"][:-1] == sample["tokens"][1:]).all()


def test_sharded_and_merged_equals_single_run_and_workers_do_not_matter(tmp_path, corpus, tokenizer_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    inputs = tmp_path / "in"
    write_jsonl(inputs / "a.jsonl", corpus[:50])
    (inputs / "b.jsonl.gz").write_bytes(gzip.compress(write_jsonl(tmp_path / "b.jsonl", corpus[50:70]).read_bytes()))
    zst = zstandard.ZstdCompressor().compress(write_jsonl(tmp_path / "c.jsonl", corpus[70:90]).read_bytes())
    (inputs / "c.jsonl.zst").write_bytes(zst)
    pq.write_table(pa.table({"text": corpus[90:110]}), inputs / "d.parquet", row_group_size=7)
    write_jsonl(inputs / "e.jsonl", corpus[110:])
    common = ["--input", inputs, "--tokenizer", tokenizer_dir, "--append-eod"]
    run_preprocess(*common, "--output-prefix", tmp_path / "single", "--workers", 1)
    run_preprocess(*common, "--output-prefix", tmp_path / "four", "--workers", 4)
    assert same_files(tmp_path / "single_text_document", tmp_path / "four_text_document")
    for shard in range(5):
        run_preprocess(*common, "--output-prefix", tmp_path / f"shards/part_{shard}", "--workers", 1,
                       "--shard-index", shard, "--num-shards", 5)
    assert merge.main(["--inputs", str(tmp_path / "shards/part_*"), "--output-prefix", str(tmp_path / "m")]) == 0
    assert same_files(tmp_path / "single_text_document", tmp_path / "m_text_document")
