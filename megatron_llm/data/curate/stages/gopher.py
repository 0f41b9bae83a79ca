"""Gopher's quality and repetition rules (Rae et al. 2021, appendix A), as pure functions.

Words are found by regex (`\\w+` with inner apostrophes), so no tokenizer data is downloaded; languages
written without spaces count a run of characters as one word, so set the word bounds accordingly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
BULLETS = ("•", "●", "○", "■", "□", "▪", "▫", "►", "▶", "‣", "◦", "⁃", "- ", "* ", "– ", "— ")
ELLIPSES = ("...", "…")
_ALPHA_RE = re.compile(r"[^\W\d_]")


def words_of(text: str) -> list[str]:
    return WORD_RE.findall(text)


def mean_word_length(words: Sequence[str]) -> float:
    return sum(map(len, words)) / len(words) if words else 0.0


def symbol_word_ratio(text: str, n_words: int) -> float:
    """Hash marks and ellipses per word."""
    symbols = text.count("#") + text.count("...") + text.count("…")
    return symbols / max(n_words, 1)


def stripped_lines(text: str) -> list[str]:
    """Non-empty lines without surrounding whitespace."""
    return [line for line in (raw.strip() for raw in text.split("\n")) if line]


def bullet_lines_ratio(lines: Sequence[str]) -> float:
    return sum(line.startswith(BULLETS) or line in ("-", "*", "•") for line in lines) / max(len(lines), 1)


def ellipsis_lines_ratio(lines: Sequence[str]) -> float:
    return sum(line.endswith(ELLIPSES) for line in lines) / max(len(lines), 1)


def alpha_words_ratio(text: str) -> float:
    """Share of whitespace-separated tokens holding at least one letter."""
    tokens = text.split()
    return sum(bool(_ALPHA_RE.search(token)) for token in tokens) / max(len(tokens), 1)


def stop_word_count(words: Sequence[str], stop_words: frozenset[str]) -> int:
    return sum(word.lower() in stop_words for word in words)


def duplicate_fractions(pieces: Sequence[str]) -> tuple[float, float]:
    """(share of pieces that repeat an earlier piece, share of characters in those repeats)."""
    seen: set[str] = set()
    dup_count = dup_chars = total_chars = 0
    for piece in pieces:
        total_chars += len(piece)
        if piece in seen:
            dup_count += 1
            dup_chars += len(piece)
        else:
            seen.add(piece)
    return dup_count / max(len(pieces), 1), dup_chars / max(total_chars, 1)


def lines_and_paragraphs(text: str) -> tuple[list[str], list[str]]:
    lines = [p for p in re.split(r"\n+", text.strip()) if p.strip()]
    paragraphs = [p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    return lines, paragraphs


class NgramCounter:
    """Repetition measures over word n-grams of one document, computed with numpy on word ids."""

    _MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)

    def __init__(self, words: Sequence[str]) -> None:
        vocabulary: dict[str, int] = {}
        self.ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), np.uint64, len(words))
        lengths = np.fromiter(map(len, words), np.int64, len(words))
        self.lengths = lengths
        self.prefix = np.concatenate([[0], np.cumsum(lengths)])
        self.total = int(self.prefix[-1])

    def _keys(self, n: int) -> np.ndarray:
        count = len(self.ids) - n + 1
        keys = self.ids[:count].copy()
        with np.errstate(over="ignore"):
            for k in range(1, n):
                keys = keys * self._MULTIPLIER + self.ids[k : k + count]
        return keys

    def top_char_fraction(self, n: int) -> float:
        """Characters covered by the most frequent n-gram (all its occurrences) over all word characters;
        among equally frequent n-grams the longest counts. 0 when no n-gram repeats."""
        if len(self.ids) < n or self.total == 0:
            return 0.0
        _, first, counts = np.unique(self._keys(n), return_index=True, return_counts=True)
        top = counts.max()
        if top < 2:
            return 0.0
        starts = first[counts == top]
        chars = (self.prefix[starts + n] - self.prefix[starts]).max()
        return float(top * chars) / self.total

    def duplicate_char_fraction(self, n: int) -> float:
        """Characters of words inside an n-gram that occurs more than once, over all word characters."""
        if len(self.ids) < n or self.total == 0:
            return 0.0
        _, inverse, counts = np.unique(self._keys(n), return_inverse=True, return_counts=True)
        repeated = np.flatnonzero(counts[inverse] > 1)
        if len(repeated) == 0:
            return 0.0
        depth = np.zeros(len(self.ids) + 1, dtype=np.int64)
        np.add.at(depth, repeated, 1)
        np.add.at(depth, repeated + n, -1)
        covered = np.cumsum(depth[:-1]) > 0
        return float(self.lengths[covered].sum()) / self.total


def top_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    return NgramCounter(words).top_char_fraction(n)


def duplicate_ngram_char_fraction(words: Sequence[str], n: int) -> float:
    return NgramCounter(words).duplicate_char_fraction(n)
