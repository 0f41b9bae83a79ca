"""The `toxicity` stage: score each document by offensive-term hits per thousand words; remove dense ones.

Terms come from the multilingual lists shipped in `wordlists/` (chosen by `languages`, `all` by default;
their source and licence are in `wordlists/README.md`) plus the user's `words` and `files`. Matching is by
whole word and case-insensitive by default. A document is removed when it has at least `min_hits` hits and
more than `max_per_thousand` hits per thousand words; the removed document carries a `toxicity` field
(hits, rate and the matched terms with their counts), which the rejects file shows. With `annotate`, kept
documents get the field too.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from megatron_llm.data.curate.stages.options import require
from megatron_llm.data.curate.stages.stage import DocStage
from megatron_llm.data.curate.stages.wordlist import WordlistParams, load_terms

_WORD = re.compile(r"\w+")
FIELD = "toxicity"


def shipped_languages() -> list[str]:
    """Language codes of the lists in the package, sorted."""
    folder = resources.files("megatron_llm.data.curate.stages") / "wordlists"
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def shipped_terms(language: str) -> list[str]:
    text = (resources.files("megatron_llm.data.curate.stages") / "wordlists" / f"{language}.txt").read_text("utf-8")
    return [t for t in (line.split("#", 1)[0].strip() for line in text.splitlines()) if t]


@dataclass
class ToxicityParams:
    languages: list[str] = field(default_factory=lambda: ["all"])  # shipped lists; [] for none
    files: list[str] = field(default_factory=list)  # user lists, one term a line, relative to the config
    words: list[str] = field(default_factory=list)
    max_per_thousand: float = 5.0  # remove above this many hits per thousand words ...
    min_hits: int = 2  # ... when the document also has at least this many hits
    case_sensitive: bool = False
    annotate: bool = False  # also add the `toxicity` field to kept documents that have hits

    def check(self) -> None:
        known = shipped_languages()
        for i, code in enumerate(self.languages):
            require(code == "all" or code in known, f"languages[{i}]",
                    f"no shipped list {code!r} (shipped: all, {', '.join(known)})")
        require(self.max_per_thousand >= 0, "max_per_thousand", "must be >= 0")
        require(self.min_hits >= 1, "min_hits", "must be >= 1")
        require(bool(self.languages or self.words or self.files), "languages",
                "the stage needs terms: give `languages`, `words` or `files`")


def toxicity_terms(params: ToxicityParams, base: Path) -> list[str]:
    """Every term the stage matches: shipped lists, then `words` and `files` (ParamError on unreadable files)."""
    codes = shipped_languages() if "all" in params.languages else params.languages
    terms = [t for code in codes for t in shipped_terms(code)]
    if params.words or params.files:
        terms += load_terms(WordlistParams(files=params.files, words=params.words), base)
    return terms


class TermCounter:
    """Whole-word counts of listed terms: single words by set lookup, phrases by one regex."""

    def __init__(self, terms: list[str], case_sensitive: bool) -> None:
        self.fold = (lambda s: s) if case_sensitive else str.casefold
        self.words = frozenset(self.fold(t) for t in terms if _WORD.fullmatch(t))
        phrases = sorted({t for t in terms if not _WORD.fullmatch(t)}, key=len, reverse=True)
        self.phrases = None
        if phrases:
            body = "|".join(r"\s+".join(re.escape(part) for part in p.split()) for p in phrases)
            self.phrases = re.compile(rf"(?<!\w)(?:{body})(?!\w)", 0 if case_sensitive else re.IGNORECASE)

    def count(self, text: str) -> tuple[int, Counter[str]]:
        """(number of words in `text`, matched term -> count)."""
        words = _WORD.findall(self.fold(text))
        found: Counter[str] = Counter(w for w in words if w in self.words)
        if self.phrases is not None:
            found.update(" ".join(self.fold(m.group(0)).split()) for m in self.phrases.finditer(text))
        return len(words), found


def score(counter: TermCounter, text: str) -> dict:
    """The `toxicity` record of a text: hits, words, hits per thousand words and the matched terms."""
    words, found = counter.count(text)
    hits = sum(found.values())
    return {"hits": hits, "words": words, "per_thousand": round(1000.0 * hits / max(words, 1), 3),
            "terms": dict(sorted(found.items()))}


class ToxicityStage(DocStage):
    name = "toxicity"

    def __init__(self, label: str, params: ToxicityParams, base: Path) -> None:
        super().__init__(label)
        self.params = params
        self.counter = TermCounter(toxicity_terms(params, base), params.case_sensitive)

    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        record = score(self.counter, text)
        rate = 1000.0 * record["hits"] / max(record["words"], 1)
        if record["hits"] >= self.params.min_hits and rate > self.params.max_per_thousand:
            doc[FIELD] = record
            return text, "toxic_terms"
        if record["hits"]:
            self.counters["documents_with_hits"] += 1
            self.counters["hits_in_kept"] += record["hits"]
            if self.params.annotate:
                doc[FIELD] = record
        return text, None
