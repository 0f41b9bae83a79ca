"""Vectorised MinHash: word n-gram shingles, signatures and LSH band keys for many documents at once.

How a signature is made (recorded on disk as ALGORITHM, because any change makes old signatures
incomparable):

1. Text is lower-cased; Unicode punctuation, symbols, separators and controls become spaces; words are
   runs of letters, digits, marks and `_`. Characters of scripts written without spaces (CJK, kana,
   Thai, Lao, Khmer, Burmese) are one word each, so their shingles are character n-grams.
2. Each word gets a 64-bit hash: a polynomial hash of its UTF-8 bytes (prefix sums over the whole batch,
   so no Python loop per word), finished with the splitmix64 mixer.
3. A shingle is `ngram` consecutive words of one document, hashed as a weighted sum of its word hashes,
   mixed again. A document with fewer words has one shingle made of all of them; an empty one has a
   fixed shingle.
4. Permutation k maps the top 32 bits x of a shingle hash to `a_k * x + b_k mod 2**32` (a_k odd); the
   signature is the minimum over the document's shingles. All shingles of a batch of documents are
   permuted as one (num_perm, shingles) array and reduced per document with `np.minimum.reduceat`.
5. A band key is a mixed 64-bit hash of the band's `rows` signature values.
"""

from __future__ import annotations

import unicodedata

import numpy as np

ALGORITHM = "megatron-llm-minhash-1"
_MASK64 = (1 << 64) - 1
_BATCH_DOCS = 64
_BATCH_BYTES = 1 << 17
_CHUNK_SHINGLES = 1 << 14
_WORD_PRIME = 0x100000001B3
_EMPTY_SHINGLE = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(seed: int, count: int) -> list[int]:
    """`count` pseudo-random 64-bit integers from `seed` (stable across numpy versions)."""
    out = []
    state = seed & _MASK64
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        out.append(z ^ (z >> 31))
    return out


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser applied element-wise to a uint64 array (a new array)."""
    x = x ^ (x >> np.uint64(30))
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _word_byte_table() -> np.ndarray:
    table = np.zeros(256, dtype=bool)
    for ch in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
        table[ch] = True
    table[0x80:] = True  # bytes of non-ASCII characters; separators among them were mapped to spaces
    return table


_WORD_BYTES = _word_byte_table()
_SEPARATORS: dict[int, str] | None = None


def _separator_table() -> dict[int, str]:
    """Non-ASCII punctuation (P), symbols (S), separators (Z) and others (C) -> space."""
    global _SEPARATORS
    if _SEPARATORS is None:
        _SEPARATORS = {
            cp: " "
            for cp in range(0x80, 0x32000)
            if unicodedata.category(chr(cp))[0] in "PSZC" and unicodedata.category(chr(cp)) != "Cn"
        }
    return _SEPARATORS


_UNSPACED_3BYTE = np.array(
    [  # code point ranges (inclusive) whose characters are words of their own
        (0x0E00, 0x0EFF),  # Thai, Lao
        (0x1000, 0x109F),  # Myanmar
        (0x1780, 0x17FF),  # Khmer
        (0x3040, 0x30FF),  # Hiragana, Katakana
        (0x3400, 0x4DBF),  # CJK extension A
        (0x4E00, 0x9FFF),  # CJK unified ideographs
        (0xF900, 0xFAFF),  # CJK compatibility ideographs
    ]
)


def _own_word_cuts(buf: np.ndarray) -> np.ndarray | None:
    """Boolean array (len(buf) + 1): True where a word must end/start because a character there (or just
    before) belongs to a script written without spaces. None when the batch has no such character."""
    leads = np.flatnonzero(buf[:-3] >= 0xE0)  # the batch ends with a space, so lead+3 is in bounds
    if len(leads) == 0:
        return None
    b0 = buf[leads].astype(np.int64)
    b1 = buf[leads + 1].astype(np.int64)
    b2 = buf[leads + 2].astype(np.int64)
    three = b0 < 0xF0
    cp = ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F)
    own = np.zeros(len(leads), dtype=bool)
    for low, high in _UNSPACED_3BYTE:
        own |= three & (cp >= low) & (cp <= high)
    own |= (b0 == 0xF0) & (b1 >= 0xA0)  # U+20000-U+3FFFF: CJK extensions B and later
    if not own.any():
        return None
    starts = leads[own]
    lengths = np.where(three[own], 3, 4)
    cuts = np.zeros(len(buf) + 1, dtype=bool)
    cuts[starts] = True
    cuts[starts + lengths] = True
    return cuts


class _Powers:
    """P**i and P**-i mod 2**64 for i < size, grown on demand."""

    def __init__(self) -> None:
        self.size = 0
        self.up = self.down = np.empty(0, dtype=np.uint64)

    def get(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size > self.size:
            n = max(size, 1 << 18, 2 * self.size)
            inverse = pow(_WORD_PRIME, -1, 1 << 64)
            with np.errstate(over="ignore"):
                up = np.cumprod(np.full(n, _WORD_PRIME, dtype=np.uint64), dtype=np.uint64)
                down = np.cumprod(np.full(n, inverse, dtype=np.uint64), dtype=np.uint64)
            self.up = np.concatenate([np.ones(1, dtype=np.uint64), up[:-1]])
            self.down = np.concatenate([np.ones(1, dtype=np.uint64), down[:-1]])
            self.size = n
        return self.up, self.down


_POWERS = _Powers()


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(bytes of all texts lower-cased, separated and followed by a space; start offset of each text)."""
    parts = []
    for text in texts:
        if not text.isascii():
            text = text.translate(_separator_table())
        parts.append(text.lower().encode("utf-8", "surrogatepass"))
    lengths = np.fromiter((len(p) + 1 for p in parts), dtype=np.int64, count=len(parts))
    starts = np.zeros(len(parts), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.frombuffer(b" ".join(parts) + b" ", dtype=np.uint8), starts


def _word_hashes(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word in the batch, index of the text it belongs to)."""
    buf, text_starts = _encode(texts)
    is_word = _WORD_BYTES[buf]
    prev = np.empty_like(is_word)
    prev[0] = False
    prev[1:] = is_word[:-1]
    nxt = np.empty_like(is_word)
    nxt[-1] = False
    nxt[:-1] = is_word[1:]
    cuts = _own_word_cuts(buf) if buf.max() >= 0xE0 else None
    if cuts is None:
        starts = np.flatnonzero(is_word & ~prev)
        ends = np.flatnonzero(is_word & ~nxt) + 1
    else:
        starts = np.flatnonzero(is_word & (~prev | cuts[:-1]))
        ends = np.flatnonzero(is_word & (~nxt | cuts[1:])) + 1
    up, down = _POWERS.get(len(buf))
    prefix = np.zeros(len(buf) + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        np.cumsum(buf * up[: len(buf)], dtype=np.uint64, out=prefix[1:])
        hashes = mix64((prefix[ends] - prefix[starts]) * down[starts])
    owner = np.searchsorted(text_starts, starts, side="right") - 1
    return hashes, owner


class Shingler:
    """Shingle hashes (64-bit) of word n-grams for batches of documents."""

    def __init__(self, ngram: int, seed: int = 0) -> None:
        self.ngram = ngram
        self.weights = [np.uint64(v | 1) for v in splitmix64(seed ^ 0x5EED5, ngram)]

    def shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(shingle hashes, owning document index), grouped by document in order; every document has at
        least one shingle."""
        n_docs = len(texts)
        words, owner = _word_hashes(texts)
        n = self.ngram
        count = len(words)
        counts = np.bincount(owner, minlength=n_docs)
        padded = np.concatenate([words, np.zeros(n - 1, dtype=np.uint64)])
        padded_owner = np.concatenate([owner, np.full(n - 1, -1, dtype=owner.dtype)])
        with np.errstate(over="ignore"):
            grams = words * self.weights[0]
            for k in range(1, n):
                same = padded_owner[k : k + count] == owner
                grams += np.where(same, padded[k : k + count], np.uint64(0)) * self.weights[k]
            whole = padded_owner[n - 1 : n - 1 + count] == owner
            if counts.min(initial=n) < n:
                first = np.ones(count, dtype=bool)
                first[1:] = owner[1:] != owner[:-1]
                whole |= first & (counts[owner] < n)
            grams = mix64(grams[whole])
        owner = owner[whole]
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            grams = np.concatenate([grams, np.full(len(empty), _EMPTY_SHINGLE, dtype=np.uint64)])
            owner = np.concatenate([owner, empty])
            order = np.argsort(owner, kind="stable")
            grams, owner = grams[order], owner[order]
        return grams, owner

    def shingle_sets(self, texts: list[str]) -> list[np.ndarray]:
        """The sorted distinct shingle hashes of each document (for exact Jaccard)."""
        out: list[np.ndarray] = []
        for batch in _batches(texts):
            grams, owner = self.shingles(batch)
            bounds = np.searchsorted(owner, np.arange(len(batch) + 1))
            out += [np.unique(grams[bounds[i] : bounds[i + 1]]) for i in range(len(batch))]
        return out


def _batches(texts: list[str]) -> list[list[str]]:
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for text in texts:
        current.append(text)
        size += len(text)
        if len(current) >= _BATCH_DOCS or size >= _BATCH_BYTES:
            batches.append(current)
            current, size = [], 0
    if current:
        batches.append(current)
    return batches


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard similarity of two sorted distinct uint64 arrays (two empty sets count as identical)."""
    union = len(a) + len(b)
    if union == 0:
        return 1.0
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (union - common)


class MinHasher:
    """MinHash signatures (uint32, one row per document) and LSH band keys."""

    def __init__(self, num_perm: int = 128, ngram: int = 5, seed: int = 1) -> None:
        self.num_perm = num_perm
        self.seed = seed
        self.shingler = Shingler(ngram, seed)
        values = splitmix64(seed, 2 * num_perm)
        self.a = np.array([(v >> 32) | 1 for v in values[:num_perm]], dtype=np.uint32)[:, None]
        self.b = np.array([v >> 32 for v in values[num_perm:]], dtype=np.uint32)[:, None]
        self.row_weights = np.array([v | 1 for v in splitmix64(seed ^ 0xBA4D, num_perm)], dtype=np.uint64)

    def describe(self) -> dict:
        return {"algorithm": ALGORITHM, "num_perm": self.num_perm, "ngram": self.shingler.ngram, "seed": self.seed}

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        done = 0
        for batch in _batches(texts):
            out[done : done + len(batch)] = self._batch(batch).T
            done += len(batch)
        return out

    def _batch(self, texts: list[str]) -> np.ndarray:
        grams, owner = self.shingler.shingles(texts)
        top = (grams >> np.uint64(32)).astype(np.uint32)
        starts = np.searchsorted(owner, np.arange(len(texts)))
        if len(top) <= _CHUNK_SHINGLES:
            values = self.a * top[None, :]
            values += self.b
            return np.minimum.reduceat(values, starts, axis=1)
        result = np.full((self.num_perm, len(texts)), np.iinfo(np.uint32).max, dtype=np.uint32)
        ends = np.append(starts[1:], len(top))
        for lo in range(0, len(top), _CHUNK_SHINGLES):
            hi = min(lo + _CHUNK_SHINGLES, len(top))
            first = int(np.searchsorted(ends, lo, side="right"))
            last = int(np.searchsorted(starts, hi, side="left"))
            local = np.maximum(starts[first:last], lo) - lo
            values = self.a * top[None, lo:hi]
            values += self.b
            reduced = np.minimum.reduceat(values, local, axis=1)
            np.minimum(result[:, first:last], reduced, out=result[:, first:last])
        return result

    def band_keys(self, signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
        """(bands, len(signatures)) uint64: one hash per band of `rows` signature values."""
        n = len(signatures)
        grouped = signatures[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
        weights = self.row_weights[: bands * rows].reshape(bands, rows)
        with np.errstate(over="ignore"):
            keys = (grouped * weights[None]).sum(axis=2, dtype=np.uint64)
            keys += np.arange(bands, dtype=np.uint64)[None, :] * np.uint64(0x9E3779B97F4A7C15)
            keys = mix64(keys)
        return np.ascontiguousarray(keys.T)
