"""64-bit SimHash over word n-gram shingles, and LSH keys that find every pair within a Hamming distance.

A document's fingerprint (recorded on disk as ALGORITHM): every shingle (the same 64-bit shingle hashes
MinHash uses, `minhash.Shingler`) votes +1 on the bits set in its hash and -1 on the others, each occurrence
once; bit b of the fingerprint is 1 when the votes on b sum to more than zero.

Finding pairs within Hamming distance k without comparing all pairs: cut the 64 bits into `blocks` blocks
(blocks > k). Two fingerprints that differ in at most k bits differ in at most k blocks, so they agree on
all the bits of at least `blocks - k` blocks. One band per combination of `blocks - k` blocks, keyed by the
fingerprint's bits in those blocks, therefore puts every such pair in a common bucket (no false negatives
among fingerprints); the verify step then drops candidates farther apart than k. More blocks mean longer
keys (fewer chance collisions) and more bands: 6 blocks for k = 3 gives 20 bands of 32-bit keys.
"""

from __future__ import annotations

import itertools

import numpy as np

from megatron_llm.data.curate.stages.minhash import Shingler, _batches, mix64

ALGORITHM = "megatron-llm-simhash-1"
_SHIFTS = np.arange(64, dtype=np.uint64)
_BAND_SALT = np.uint64(0x9E3779B97F4A7C15)


def block_masks(blocks: int) -> list[int]:
    """Bit masks of `blocks` contiguous, nearly equal blocks covering the 64 bits."""
    bounds = [round(64 * i / blocks) for i in range(blocks + 1)]
    return [((1 << hi) - 1) ^ ((1 << lo) - 1) for lo, hi in zip(bounds[:-1], bounds[1:])]


def band_masks(blocks: int, hamming: int) -> list[int]:
    """One mask per combination of `blocks - hamming` blocks, in a fixed order."""
    masks = block_masks(blocks)
    return [sum(masks[i] for i in chosen) for chosen in itertools.combinations(range(blocks), blocks - hamming)]


def hamming_distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class SimHasher:
    """Fingerprints (uint64, one per document) and band keys."""

    def __init__(self, ngram: int = 2, seed: int = 1, blocks: int = 6, hamming: int = 3) -> None:
        self.shingler = Shingler(ngram, seed)
        self.seed, self.blocks, self.hamming = seed, blocks, hamming
        self.masks = np.array(band_masks(blocks, hamming), dtype=np.uint64)

    def describe(self) -> dict:
        return {"algorithm": ALGORITHM, "ngram": self.shingler.ngram, "seed": self.seed, "blocks": self.blocks,
                "hamming": self.hamming}

    def fingerprints(self, texts: list[str]) -> np.ndarray:
        out = np.empty(len(texts), dtype=np.uint64)
        done = 0
        for batch in _batches(texts):
            out[done:done + len(batch)] = self._batch(batch)
            done += len(batch)
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        grams, owner = self.shingler.shingles(texts)
        bits = ((grams[:, None] >> _SHIFTS[None, :]) & np.uint64(1)).astype(np.int32)
        starts = np.searchsorted(owner, np.arange(len(texts)))
        votes = np.add.reduceat(2 * bits - 1, starts, axis=0)  # (docs, 64)
        return ((votes > 0).astype(np.uint64) << _SHIFTS[None, :]).sum(axis=1, dtype=np.uint64)

    def band_keys(self, fingerprints: np.ndarray) -> np.ndarray:
        """(bands, len(fingerprints)) uint64: a mixed hash of the fingerprint's bits in each band's blocks."""
        with np.errstate(over="ignore"):
            salted = (fingerprints[None, :] & self.masks[:, None]) + (
                np.arange(len(self.masks), dtype=np.uint64)[:, None] * _BAND_SALT)
            return np.ascontiguousarray(mix64(salted))

    def within(self, texts: dict[int, str], edges: np.ndarray) -> np.ndarray:
        """For (2, E) edges of document ids: True where the two fingerprints are within `hamming` bits."""
        ordered = sorted(texts)
        prints = dict(zip(ordered, self.fingerprints([texts[i] for i in ordered]).tolist()))
        return np.array([hamming_distance(prints[a], prints[b]) <= self.hamming
                         for a, b in zip(edges[0].tolist(), edges[1].tolist())], dtype=bool)
