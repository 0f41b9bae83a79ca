"""The `wordlist` stage: remove documents that contain listed words or phrases (toxic/adult content).

Matching is by whole word: `ass` does not match `class`. Lists come from the config (`words`) and from
files (`files`, one word or phrase per line, `#` starts a comment; paths relative to the config file).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from megatron_llm.data.curate.stages.options import ParamError, require
from megatron_llm.data.curate.stages.stage import DocStage

_WORD = re.compile(r"\w+")


@dataclass
class WordlistParams:
    files: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    min_matches: int = 1  # remove a document with at least this many matches
    case_sensitive: bool = False

    def check(self) -> None:
        require(self.min_matches >= 1, "min_matches", "must be >= 1")
        require(bool(self.files or self.words), "words", "give `words` or `files` (the stage needs a list)")


def load_terms(params: WordlistParams, base: Path) -> list[str]:
    """Every listed term, from `words` and the files (relative to `base`)."""
    terms = [w.strip() for w in params.words if w.strip()]
    for i, name in enumerate(params.files):
        path = Path(name) if Path(name).is_absolute() else base / name
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            raise ParamError(f"files[{i}]", f"cannot read {path}: {error}") from error
        terms += [t for t in (line.split("#", 1)[0].strip() for line in lines) if t]
    return terms


class WordlistMatcher:
    """Counts whole-word matches: single words by set lookup, phrases by one compiled regex."""

    def __init__(self, terms: list[str], case_sensitive: bool) -> None:
        self.fold = (lambda s: s) if case_sensitive else str.casefold
        singles = {self.fold(t) for t in terms if _WORD.fullmatch(t)}
        phrases = sorted({t for t in terms if not _WORD.fullmatch(t)}, key=len, reverse=True)
        self.words = frozenset(singles)
        self.phrases = None
        if phrases:
            body = "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in phrases)
            flags = 0 if case_sensitive else re.IGNORECASE
            self.phrases = re.compile(rf"(?<!\w)(?:{body})(?!\w)", flags)

    def count(self, text: str, limit: int) -> int:
        found = 0
        if self.words:
            for word in _WORD.findall(self.fold(text)):
                if word in self.words:
                    found += 1
                    if found >= limit:
                        return found
        if self.phrases is not None:
            for _ in self.phrases.finditer(text):
                found += 1
                if found >= limit:
                    return found
        return found


class WordlistStage(DocStage):
    name = "wordlist"

    def __init__(self, label: str, params: WordlistParams, base: Path) -> None:
        super().__init__(label)
        self.min_matches = params.min_matches
        self.matcher = WordlistMatcher(load_terms(params, base), params.case_sensitive)

    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        if self.matcher.count(text, self.min_matches) >= self.min_matches:
            return text, "listed_words"
        return text, None
