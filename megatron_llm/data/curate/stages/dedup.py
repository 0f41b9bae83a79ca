"""Parameters and per-document keys of the dedup stages (exact, MinHash and SimHash near-duplicates).

A dedup stage works in three places: the map step that ends with it computes one key per band for every
surviving document; a bucket step per band groups equal keys into candidate edges; one cluster step joins
the edges (union-find) and lists the documents to remove. Exact dedup is the one-band case whose key is
a 128-bit hash of the normalised text. The near-duplicate stages' verify step asks the key maker which
candidate edges are real (`similar`).
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from dataclasses import dataclass

import numpy as np

from megatron_llm.data.curate.stages.minhash import MinHasher, Shingler, jaccard
from megatron_llm.data.curate.stages.normalize import remove_controls
from megatron_llm.data.curate.stages.options import require
from megatron_llm.data.curate.stages.simhash import SimHasher

EXACT_ALGORITHM = "blake2b-128 of NFC text without control characters, whitespace runs as one space"


@dataclass
class ExactDedupParams:
    normalize: bool = True  # hash NFC text without control characters, every whitespace run as one space
    lowercase: bool = False  # also ignore case
    partitions: int = 1  # split the hash space over this many bucket tasks (bounds their memory)

    def check(self) -> None:
        require(self.partitions >= 1, "partitions", "must be >= 1")

    @property
    def bands(self) -> int:
        return 1


@dataclass
class MinhashDedupParams:
    ngram: int = 5  # words per shingle
    num_perm: int = 128  # signature length
    bands: int = 16  # LSH bands x rows: with 16 x 8 a pair at Jaccard 0.8 becomes a candidate 95% of the time
    rows: int = 8
    threshold: float = 0.8  # Jaccard a verified pair must reach
    verify: bool = True  # check candidate pairs with exact Jaccard of their shingle sets
    seed: int = 1
    partitions: int = 1  # split each band's key space over this many bucket tasks (bounds their memory)

    def check(self) -> None:
        require(self.ngram >= 1, "ngram", "must be >= 1")
        require(1 <= self.num_perm <= 1024, "num_perm", "must be between 1 and 1024")
        require(self.bands >= 1, "bands", "must be >= 1")
        require(self.rows >= 1, "rows", "must be >= 1")
        require(
            self.bands * self.rows <= self.num_perm,
            "bands",
            f"bands x rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}",
        )
        require(0.0 < self.threshold <= 1.0, "threshold", "must be in (0, 1]")
        require(self.partitions >= 1, "partitions", "must be >= 1")

    def candidate_probability(self, jaccard: float) -> float:
        """Chance that a pair with this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


@dataclass
class SimhashDedupParams:
    ngram: int = 2  # words per shingle (2 separates edited copies from unrelated text better than 1 or 5)
    hamming: int = 3  # a pair is a near-duplicate when its 64-bit fingerprints differ in at most this many bits
    blocks: int = 6  # LSH: 64 bits cut into this many blocks; one band per choice of (blocks - hamming) blocks
    verify: bool = True  # check candidate pairs' Hamming distance (without it, every candidate counts)
    seed: int = 1
    partitions: int = 1  # split each band's key space over this many bucket tasks (bounds their memory)

    def check(self) -> None:
        require(self.ngram >= 1, "ngram", "must be >= 1")
        require(0 <= self.hamming <= 32, "hamming", "must be between 0 and 32")
        require(self.hamming < self.blocks <= 64, "blocks", f"must be in ({self.hamming}, 64] (more than `hamming`)")
        require(self.bands <= 4096, "blocks", f"{self.bands} bands (C(blocks, hamming)) is too many; use fewer blocks")
        require(self.partitions >= 1, "partitions", "must be >= 1")

    @property
    def bands(self) -> int:
        return math.comb(self.blocks, self.hamming)


def canonical_text(text: str) -> str:
    """What exact dedup compares: NFC, no control characters, each whitespace run (newlines too) one space."""
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return " ".join(remove_controls(text).split())


class ExactKeys:
    """One band; the key is two uint64 words of a 128-bit BLAKE2b digest."""

    width = 2

    def __init__(self, params: ExactDedupParams) -> None:
        self.params = params

    def describe(self) -> dict:
        return {"algorithm": EXACT_ALGORITHM, "normalize": self.params.normalize, "lowercase": self.params.lowercase}

    def keys(self, texts: list[str]) -> np.ndarray:
        out = np.empty((1, len(texts), 2), dtype=np.uint64)
        for i, text in enumerate(texts):
            if self.params.normalize:
                text = canonical_text(text)
            if self.params.lowercase:
                text = text.lower()
            digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            out[0, i] = np.frombuffer(digest, dtype="<u8")
        return out


class MinhashKeys:
    """`bands` bands; each key is one uint64 band hash of the MinHash signature."""

    width = 1

    def __init__(self, params: MinhashDedupParams) -> None:
        self.params = params
        self.hasher = MinHasher(params.num_perm, params.ngram, params.seed)

    def describe(self) -> dict:
        return {**self.hasher.describe(), "bands": self.params.bands, "rows": self.params.rows}

    def keys(self, texts: list[str]) -> np.ndarray:
        signatures = self.hasher.signatures(texts)
        return self.hasher.band_keys(signatures, self.params.bands, self.params.rows)[:, :, None]

    def similar(self, texts: dict[int, str], edges: np.ndarray) -> np.ndarray:
        """For (2, E) edges of document ids: True where exact Jaccard of the shingle sets reaches the threshold."""
        ordered = sorted(texts)
        shingler = Shingler(self.params.ngram, self.params.seed)
        sets = dict(zip(ordered, shingler.shingle_sets([texts[i] for i in ordered])))
        return np.array([jaccard(sets[a], sets[b]) >= self.params.threshold
                         for a, b in zip(edges[0].tolist(), edges[1].tolist())], dtype=bool)


class SimhashKeys:
    """C(blocks, hamming) bands; each key is one uint64 hash of the fingerprint's bits in the band's blocks."""

    width = 1

    def __init__(self, params: SimhashDedupParams) -> None:
        self.params = params
        self.hasher = SimHasher(params.ngram, params.seed, params.blocks, params.hamming)

    def describe(self) -> dict:
        return self.hasher.describe()

    def keys(self, texts: list[str]) -> np.ndarray:
        return self.hasher.band_keys(self.hasher.fingerprints(texts))[:, :, None]

    def similar(self, texts: dict[int, str], edges: np.ndarray) -> np.ndarray:
        return self.hasher.within(texts, edges)


def keyer_for(spec) -> ExactKeys | MinhashKeys | SimhashKeys:
    """The key maker of a dedup StageSpec."""
    if spec.name == "exact_dedup":
        return ExactKeys(spec.params)
    if spec.name == "simhash_dedup":
        return SimhashKeys(spec.params)
    return MinhashKeys(spec.params)
