"""The shard checks train and merge-shards share: consistent datasets pass and read as megatron-core reads
them; damaged ones are named; the token-id sidecar agrees with the tokens and is not trusted once stale;
the split check counts documents the way megatron-core's dataset builder does."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_llm.data.shards.checks import STATS_SUFFIX, check_dataset, token_id_range
from megatron_llm.data.shards.indexed_writer import IndexedDatasetWriter
from megatron_llm.errors import UsageError
from megatron_llm.training.data import check_shards

REPO = Path(__file__).resolve().parents[2]


def write(prefix: Path, docs: int, tokens: int, high: int, seed: int = 0) -> np.ndarray:
    ids = np.random.default_rng(seed).integers(0, high, docs * tokens)
    ids[docs * tokens // 2] = high - 1  # the largest id always occurs
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(ids, np.full(docs, tokens), np.ones(docs, np.int64))
        writer.finish()
    return ids


def test_a_consistent_dataset_passes_and_matches_megatron_core(tmp_path):
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    ids = write(tmp_path / "d", 7, 13, 300)
    summary = check_dataset(str(tmp_path / "d"))
    reference = IndexedDataset(str(tmp_path / "d"))
    assert (summary.documents, summary.sequences) == (len(reference.document_indices) - 1, len(reference))
    assert summary.tokens == int(reference.sequence_lengths.sum()) == ids.size


@pytest.mark.parametrize("damage, message", [
    (lambda p: _truncate(f"{p}.bin", 50), "d.bin: 50 bytes, the index describes 182 (truncated)"),
    (lambda p: _poke(f"{p}.bin", 182, b"\0\0"), "d.bin: 184 bytes, the index describes 182 (longer"),
    (lambda p: _truncate(f"{p}.idx", 40), "d.idx: truncated: 40 bytes, the header promises"),
    (lambda p: _poke(f"{p}.idx", 0, b"X"), "d.idx: not a Megatron indexed dataset index (bad header)"),
    (lambda p: _poke(f"{p}.idx", 34 + 7 * 4 + 8, np.int64(2).tobytes()), "sequence pointers do not match"),
])
def test_damaged_datasets_are_named(tmp_path, damage, message):
    write(tmp_path / "d", 7, 13, 300)
    damage(tmp_path / "d")
    with pytest.raises(UsageError) as failed:
        check_dataset(str(tmp_path / "d"))
    assert message in str(failed.value)


def _truncate(path: str, size: int) -> None:
    with open(path, "r+b") as stream:
        stream.truncate(size)


def _poke(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        stream.write(data)


def test_megatron_core_itself_accepts_a_truncated_bin(tmp_path):
    """Negative control: why train checks first. megatron-core opens the truncated pair without a word."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    write(tmp_path / "d", 7, 13, 300)
    _truncate(str(tmp_path / "d.bin"), 50)
    assert len(IndexedDataset(str(tmp_path / "d"))) == 7


def test_the_token_id_sidecar_agrees_and_is_not_trusted_once_stale(tmp_path):
    ids = write(tmp_path / "d", 5, 20, 540)
    stats = json.loads(Path(f"{tmp_path / 'd'}{STATS_SUFFIX}").read_text())
    assert (stats["min_token_id"], stats["max_token_id"]) == (int(ids.min()), int(ids.max()))
    raw = np.fromfile(tmp_path / "d.bin", dtype=np.uint16)
    raw[3] = 60000
    raw.tofile(tmp_path / "d.bin")  # same size, new mtime: the sidecar no longer describes it
    assert token_id_range(str(tmp_path / "d")) == (int(raw.min()), 60000)


def test_ids_beyond_the_vocabulary_and_small_splits_are_named(tmp_path):
    write(tmp_path / "d", 20, 30, 540)
    with pytest.raises(UsageError, match=r"d\.bin: holds token id 539, but model\.vocab_size=512"):
        check_shards([str(tmp_path / "d")], 512, "98,2,0", [True, True, False], 64)
    with pytest.raises(UsageError, match=r"the valid split of .* gets 0 of 20 documents \(0 tokens\).*'87,13,0'"):
        check_shards([str(tmp_path / "d")], 540, "99,1,0", [True, True, False], 64)
    matrix = check_shards([str(tmp_path / "d")], 540, "87,13,0", [True, True, False], 64)
    assert matrix[2] is None  # the test split is never read, so it is not built


BUILD = r"""
import sys, numpy as np
from megatron_llm.config.loader import load_config
from megatron_llm.training.data import TokenizerInfo, build_datasets, _split_matrix, _split_tokens
from megatron_llm.data.shards.indexed_writer import read_index
from megatron_llm.data.shards.checks import document_tokens
prefix, cache = sys.argv[1], sys.argv[2]
config = load_config("examples/configs/tiny.yaml", [f"data.paths=[{prefix}]", "data.synthetic=false",
                                                     f"data.cache_dir={cache}"])
train, valid = build_datasets(config, 10, TokenizerInfo(540, 539, -1))
per_doc = document_tokens(read_index(prefix))
ours = [_split_tokens(per_doc, b)[0] for b in _split_matrix(config.data.split)[:2]]
print(config.data.split, len(train.indices), len(valid.indices), ours[0], ours[1])
"""


def test_a_small_corpus_with_the_default_split_builds_instead_of_hanging(tmp_path):
    """50 documents of 300 tokens with data.split 969,30,1: the test split would get no document and
    megatron-core would loop forever building it; it is not built, and the splits that are read hold the
    documents megatron-core's builder gives them (its datasets' document indices are the independent count). The
    timeout only guards against the hang coming back."""
    write(tmp_path / "small", 50, 300, 540)
    result = subprocess.run([sys.executable, "-c", BUILD, str(tmp_path / "small"), str(tmp_path / "cache")],
                            cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    split, train_docs, valid_docs, our_train, our_valid = result.stdout.split("\n")[-2].split()
    assert split == "969,30,1" and (int(train_docs), int(valid_docs)) == (int(our_train), int(our_valid)) == (48, 2)
