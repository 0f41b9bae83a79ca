"""The `quality` stage: Gopher's quality and repetition rules, then C4's line cleaning and document rules,
then the rules for code (the order FineWeb runs Gopher and C4 in).

Every threshold is a parameter; null switches that rule off. The first rule that fails names the
reason (e.g. `gopher_word_count`, `c4_lorem_ipsum`, `code_max_line_length`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_llm.data.curate.stages import gopher
from megatron_llm.data.curate.stages.c4 import C4Rules, apply_c4
from megatron_llm.data.curate.stages.options import require
from megatron_llm.data.curate.stages.stage import DocStage

GOPHER_STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]


@dataclass
class QualityParams:
    # Gopher quality rules
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1
    max_bullet_lines_ratio: float | None = 0.9
    max_ellipsis_lines_ratio: float | None = 0.3
    min_alpha_words_ratio: float | None = 0.8
    min_stop_words: int | None = 2
    stop_words: list[str] = field(default_factory=lambda: list(GOPHER_STOP_WORDS))
    # Gopher repetition rules
    max_duplicate_lines_ratio: float | None = 0.3
    max_duplicate_paragraphs_ratio: float | None = 0.3
    max_duplicate_line_chars_ratio: float | None = 0.2
    max_duplicate_paragraph_chars_ratio: float | None = 0.2
    max_top_ngram_chars_ratio: dict[int, float] = field(default_factory=lambda: {2: 0.2, 3: 0.18, 4: 0.16})
    max_duplicate_ngram_chars_ratio: dict[int, float] = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    # C4 rules (lorem ipsum and braces, then line removal, then the sentence count)
    c4_terminal_punctuation: bool = True
    c4_min_words_per_line: int | None = 3
    c4_max_word_length: int | None = 1000
    c4_javascript_lines: bool = True
    c4_policy_lines: bool = True
    c4_lorem_ipsum: bool = True
    c4_curly_braces: bool = True
    c4_min_sentences: int | None = 5
    # rules for source code (off by default)
    max_line_length: int | None = None
    max_mean_line_length: float | None = None
    min_alphanumeric_ratio: float | None = None

    def check(self) -> None:
        for name in ("max_top_ngram_chars_ratio", "max_duplicate_ngram_chars_ratio"):
            require(all(n >= 1 for n in getattr(self, name)), name, "n-gram sizes must be >= 1")
        for name, value in vars(self).items():
            if name.endswith("_ratio") and isinstance(value, float):
                require(0.0 <= value <= 1.0, name, "must be between 0 and 1")


def _over(value: float, limit: float | None) -> bool:
    return limit is not None and value > limit


def _under(value: float, limit: float | None) -> bool:
    return limit is not None and value < limit


class QualityStage(DocStage):
    name = "quality"

    def __init__(self, label: str, params: QualityParams) -> None:
        super().__init__(label)
        self.p = params
        self.stop_words = frozenset(w.lower() for w in params.stop_words)
        self.c4 = C4Rules(
            terminal_punctuation=params.c4_terminal_punctuation,
            min_words_per_line=params.c4_min_words_per_line,
            max_word_length=params.c4_max_word_length,
            javascript=params.c4_javascript_lines,
            policy=params.c4_policy_lines,
            lorem_ipsum=params.c4_lorem_ipsum,
            curly_braces=params.c4_curly_braces,
            min_sentences=params.c4_min_sentences,
        )

    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        reason = self._gopher(text)
        if reason is not None:
            return text, reason
        new, reason = apply_c4(text, self.c4)
        if reason is None:
            if new != text:
                self.counters["c4_lines_removed"] += 1
            reason = self._code(new)
        return new, reason

    def _gopher(self, text: str) -> str | None:
        p = self.p
        words = gopher.words_of(text.lower())
        n = len(words)
        if _under(n, p.min_words) or _over(n, p.max_words):
            return "gopher_word_count"
        mean = gopher.mean_word_length(words)
        if _under(mean, p.min_mean_word_length) or _over(mean, p.max_mean_word_length):
            return "gopher_mean_word_length"
        if _over(gopher.symbol_word_ratio(text, n), p.max_symbol_word_ratio):
            return "gopher_symbol_ratio"
        if p.max_bullet_lines_ratio is not None or p.max_ellipsis_lines_ratio is not None:
            lines = gopher.stripped_lines(text)
            if _over(gopher.bullet_lines_ratio(lines), p.max_bullet_lines_ratio):
                return "gopher_bullet_lines"
            if _over(gopher.ellipsis_lines_ratio(lines), p.max_ellipsis_lines_ratio):
                return "gopher_ellipsis_lines"
        if p.min_alpha_words_ratio is not None and _under(gopher.alpha_words_ratio(text), p.min_alpha_words_ratio):
            return "gopher_alpha_words"
        if _under(gopher.stop_word_count(words, self.stop_words), p.min_stop_words):
            return "gopher_stop_words"
        return self._repetition(text, words)

    def _repetition(self, text: str, words: list[str]) -> str | None:
        """Gopher's repetition rules; `words` are lower-cased."""
        p = self.p
        lines, paragraphs = gopher.lines_and_paragraphs(text)
        line_frac, line_chars = gopher.duplicate_fractions(lines)
        if _over(line_frac, p.max_duplicate_lines_ratio):
            return "gopher_duplicate_lines"
        if _over(line_chars, p.max_duplicate_line_chars_ratio):
            return "gopher_duplicate_line_chars"
        para_frac, para_chars = gopher.duplicate_fractions(paragraphs)
        if _over(para_frac, p.max_duplicate_paragraphs_ratio):
            return "gopher_duplicate_paragraphs"
        if _over(para_chars, p.max_duplicate_paragraph_chars_ratio):
            return "gopher_duplicate_paragraph_chars"
        if not p.max_top_ngram_chars_ratio and not p.max_duplicate_ngram_chars_ratio:
            return None
        grams = gopher.NgramCounter(words)
        for n, limit in sorted(p.max_top_ngram_chars_ratio.items()):
            if _over(grams.top_char_fraction(n), limit):
                return f"gopher_top_{n}gram"
        duplicate = sorted(p.max_duplicate_ngram_chars_ratio.items())
        for i, (n, limit) in enumerate(duplicate):
            fraction = grams.duplicate_char_fraction(n)
            if _over(fraction, limit):
                return f"gopher_duplicate_{n}gram"
            if fraction <= min(rest for _, rest in duplicate[i:]):
                break  # coverage only shrinks as n grows, so no longer n-gram can fail
        return None

    def _code(self, text: str) -> str | None:
        p = self.p
        if p.max_line_length is None and p.max_mean_line_length is None and p.min_alphanumeric_ratio is None:
            return None
        lengths = [len(line) for line in text.splitlines()] or [0]
        if _over(max(lengths), p.max_line_length):
            return "code_max_line_length"
        if _over(sum(lengths) / len(lengths), p.max_mean_line_length):
            return "code_mean_line_length"
        if p.min_alphanumeric_ratio is not None:
            alnum = sum(ch.isalnum() for ch in text)
            if _under(alnum / max(len(text), 1), p.min_alphanumeric_ratio):
                return "code_alphanumeric_ratio"
        return None
