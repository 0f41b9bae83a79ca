"""MinHash signatures, band keys, bucket grouping and union-find of the curate command."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from megatron_llm.data.curate.corpus import edit_words, stdlib_chunks
from megatron_llm.data.curate.pipeline.buckets import group_edges
from megatron_llm.data.curate.pipeline.clusters import cluster_removals, union_find_roots
from megatron_llm.data.curate.stages.minhash import MinHasher, Shingler, jaccard


@pytest.fixture(scope="module")
def chunks() -> list[str]:
    return stdlib_chunks(400)


def _reference_signature(hasher: MinHasher, shingles: np.ndarray) -> np.ndarray:
    top = (shingles >> np.uint64(32)).astype(np.uint32)
    with np.errstate(over="ignore"):
        return (hasher.a * top[None, :] + hasher.b).min(axis=1)


def test_signatures_equal_the_definition_document_by_document(chunks):
    hasher = MinHasher(num_perm=64, ngram=5, seed=3)
    texts = chunks[:40] + ["", "two words", "x " * 3, "Ünïcödé — «quoted» text, with punctuation!"]
    signatures = hasher.signatures(texts)
    sets = hasher.shingler.shingle_sets(texts)
    for text, signature, shingles in zip(texts, signatures, sets):
        assert np.array_equal(signature, _reference_signature(hasher, shingles)), text[:40]


def test_a_huge_document_is_hashed_in_chunks_with_the_same_result(chunks):
    hasher = MinHasher(num_perm=32, ngram=5)
    big = " ".join(chunks[:150])  # more shingles than one chunk of the permutation matrix
    together = hasher.signatures([chunks[0], big, chunks[1]])
    alone = hasher.signatures([big])
    assert np.array_equal(together[1], alone[0])
    assert np.array_equal(together[1], _reference_signature(hasher, hasher.shingler.shingle_sets([big])[0]))
    assert np.array_equal(together[0], hasher.signatures([chunks[0]])[0])


def test_signatures_do_not_depend_on_batching(chunks):
    hasher = MinHasher()
    one_by_one = np.concatenate([hasher.signatures([c]) for c in chunks[:100]])
    assert np.array_equal(hasher.signatures(chunks[:100]), one_by_one)


def test_tokenisation_ignores_case_and_punctuation_and_splits_unspaced_scripts():
    shingler = Shingler(ngram=2)
    same = shingler.shingle_sets(["Hello, World! How are you?", "hello world how are you"])
    assert np.array_equal(same[0], same[1])
    (chinese,) = shingler.shingle_sets(["我们今天去公园"])  # 7 characters are 7 words: 6 bigrams
    assert len(chinese) == 6
    (thai,) = shingler.shingle_sets(["สวัสดี"])
    assert len(thai) == len("สวัสดี") - 1


def test_estimated_jaccard_is_unbiased_against_exact_jaccard(chunks):
    rng = random.Random(0)
    vocabulary = sorted({w for c in chunks[:50] for w in c.split()})
    hasher = MinHasher(num_perm=128, ngram=5)
    errors = []
    for text in chunks[:200]:
        copy = edit_words(text, rng.uniform(0.0, 0.08), rng, vocabulary)
        a, b = hasher.shingler.shingle_sets([text, copy])
        signatures = hasher.signatures([text, copy])
        errors.append(float((signatures[0] == signatures[1]).mean()) - jaccard(a, b))
    errors = np.array(errors)
    assert abs(errors.mean()) < 0.01
    assert errors.std() < 0.06  # binomial standard deviation is at most sqrt(0.25 / 128) = 0.044


def test_exact_jaccard_matches_python_sets():
    shingler = Shingler(ngram=3)
    a_text = "the cat sat on the mat with the hat"
    b_text = "the cat sat on a mat with the hat"
    a, b = shingler.shingle_sets([a_text, b_text])

    def grams(text: str) -> set:
        words = re.findall(r"\w+", text)
        return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}

    expected = len(grams(a_text) & grams(b_text)) / len(grams(a_text) | grams(b_text))
    assert jaccard(a, b) == pytest.approx(expected)


def test_band_keys_collide_exactly_when_band_rows_are_equal():
    hasher = MinHasher(num_perm=16)
    signatures = np.arange(48, dtype=np.uint32).reshape(3, 16)
    signatures[1, :4] = signatures[0, :4]  # documents 0 and 1 share band 0 only
    keys = hasher.band_keys(signatures, bands=4, rows=4)
    assert keys.shape == (4, 3)
    assert keys[0, 0] == keys[0, 1]
    assert (keys[1:, 0] != keys[1:, 1]).all()
    assert len(set(keys[:, 2].tolist()) & set(keys[:, 0].tolist())) == 0


def test_group_edges_link_each_member_to_the_smallest_id():
    keys = np.array([[5], [7], [5], [9], [7], [5]], dtype=np.uint64)
    ids = np.array([30, 11, 20, 40, 50, 25], dtype=np.uint64)
    edges = group_edges(keys, ids)
    assert edges.tolist() == [[25, 30, 50], [20, 20, 11]]
    wide = group_edges(np.array([[1, 2], [1, 3], [1, 2]], dtype=np.uint64), np.array([3, 2, 1], dtype=np.uint64))
    assert wide.tolist() == [[3], [1]]
    assert group_edges(np.empty((0, 1), dtype=np.uint64), np.empty(0, dtype=np.uint64)).shape == (2, 0)


def test_union_find_roots_are_component_minima():
    rng = np.random.default_rng(0)
    n = 500
    a = rng.integers(0, n, 300)
    b = rng.integers(0, n, 300)
    roots = union_find_roots(a, b, n)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        parent[max(rx, ry)] = min(rx, ry)
    assert roots.tolist() == [find(x) for x in range(n)]
    chain = np.arange(1000)
    assert (union_find_roots(chain[1:], chain[:-1], 1000) == 0).all()


def test_cluster_removals_keep_the_first_document_of_each_cluster():
    edges = np.array([[9, 4, 7, 12], [4, 2, 3, 7]], dtype=np.uint64)
    removed, kept_as, summary = cluster_removals(edges)
    assert removed.tolist() == [4, 7, 9, 12]
    assert kept_as.tolist() == [2, 3, 2, 3]
    assert summary == {"edges": 4, "clusters": 2, "removed": 4, "largest_cluster": 3}
