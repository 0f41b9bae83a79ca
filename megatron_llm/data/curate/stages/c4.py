"""C4's cleaning rules (Raffel et al. 2020, section 2.2): line removal and document rejection."""

from __future__ import annotations

import re
from dataclasses import dataclass

TERMINAL_PUNCTUATION = (".", "!", "?", '"', "'", "”", "’", "。", "！", "？", "…")
POLICY_PHRASES = (
    "terms of use",
    "privacy policy",
    "cookie policy",
    "uses cookies",
    "use of cookies",
    "use cookies",
)
_SENTENCE_END = re.compile(r"[.!?。！？]+(?=\s|$)")
_LOREM = re.compile(r"lorem ipsum", re.IGNORECASE)


@dataclass
class C4Rules:
    terminal_punctuation: bool
    min_words_per_line: int | None
    max_word_length: int | None
    javascript: bool
    policy: bool
    lorem_ipsum: bool
    curly_braces: bool
    min_sentences: int | None


def _drop_line(line: str, rules: C4Rules) -> bool:
    stripped = line.strip()
    if rules.terminal_punctuation and not stripped.endswith(TERMINAL_PUNCTUATION):
        return True
    words = stripped.split()
    if rules.min_words_per_line is not None and len(words) < rules.min_words_per_line:
        return True
    if rules.max_word_length is not None and any(len(w) > rules.max_word_length for w in words):
        return True
    lower = stripped.lower()
    if rules.javascript and "javascript" in lower:
        return True
    return rules.policy and any(phrase in lower for phrase in POLICY_PHRASES)


def apply_c4(text: str, rules: C4Rules) -> tuple[str, str | None]:
    """(text with offending lines removed, reason the document is rejected or None)."""
    if rules.lorem_ipsum and _LOREM.search(text):
        return text, "c4_lorem_ipsum"
    if rules.curly_braces and "{" in text:
        return text, "c4_curly_braces"
    line_rules = (
        rules.terminal_punctuation,
        rules.min_words_per_line is not None,
        rules.max_word_length is not None,
        rules.javascript,
        rules.policy,
    )
    if any(line_rules):
        lines = text.split("\n")
        kept = [line for line in lines if not line.strip() or not _drop_line(line, rules)]
        if len(kept) != len(lines):
            text = "\n".join(kept).strip()
        if not text:
            return text, "c4_no_lines_left"
    if rules.min_sentences is not None and len(_SENTENCE_END.findall(text)) < rules.min_sentences:
        return text, "c4_min_sentences"
    return text, None
