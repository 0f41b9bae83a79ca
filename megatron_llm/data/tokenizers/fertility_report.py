"""Fertility report: how many tokens a tokenizer spends per word and per UTF-8 byte, per writing system.

Each held-out document is assigned the script most of its letters belong to (from Unicode character
names), so a multilingual corpus shows e.g. Latin, Cyrillic, Thai and Han side by side. "Words" are
whitespace-separated; for scripts written without spaces (Thai, Han, ...) tokens per byte and per
character are the meaningful columns. With a baseline tokenizer the same columns are shown for it and the
ratio baseline/ours (above 1 means ours needs fewer tokens).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from megatron_llm.data.tokenizers.tokenizer import (
    MANIFEST,
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    load_tokenizer,
)
from megatron_llm.errors import UsageError

_SCRIPT_NAMES = {
    "CJK": "Han",
    "HIRAGANA": "Kana",
    "KATAKANA": "Kana",
    "HANGUL": "Hangul",
    "LATIN": "Latin",
    "CYRILLIC": "Cyrillic",
    "GREEK": "Greek",
    "ARABIC": "Arabic",
    "HEBREW": "Hebrew",
    "DEVANAGARI": "Devanagari",
    "BENGALI": "Bengali",
    "TAMIL": "Tamil",
    "TELUGU": "Telugu",
    "THAI": "Thai",
    "LAO": "Lao",
    "MYANMAR": "Myanmar",
    "KHMER": "Khmer",
    "GEORGIAN": "Georgian",
    "ARMENIAN": "Armenian",
    "ETHIOPIC": "Ethiopic",
}


@lru_cache(maxsize=1 << 16)
def char_script(char: str) -> str | None:
    """The script of a letter or mark, None for anything else (digits, punctuation, spaces)."""
    if not unicodedata.category(char).startswith(("L", "M")):
        return None
    first = unicodedata.name(char, "").split(" ", 1)[0]
    return _SCRIPT_NAMES.get(first, first.title() or None)


def document_script(text: str, sample_chars: int = 4096) -> str:
    counts: dict[str, int] = defaultdict(int)
    for char in text[:sample_chars]:
        script = char_script(char)
        if script:
            counts[script] += 1
    return max(counts, key=counts.get) if counts else "Common"


def load_any_tokenizer(path: str) -> Tokenizer:
    """A tokenizer directory, a Hugging Face directory/tokenizer.json, or a SentencePiece .model file."""
    location = Path(path)
    if (location / MANIFEST).is_file():
        return load_tokenizer(location)
    if location.is_dir() and (location / "tokenizer.json").is_file():
        location = location / "tokenizer.json"
    if location.is_file() and location.suffix == ".json":
        return HFTokenizer(location.read_text(encoding="utf-8"), 0)
    if location.is_file():
        return SentencePieceTokenizer(location.read_bytes(), 0)
    raise UsageError(f"--baseline {path}: not a tokenizer directory, tokenizer.json or SentencePiece model")


def fertility(texts: list[str], tokenizers: dict[str, Tokenizer]) -> dict[str, dict]:
    """{script: {"documents", "bytes", "chars", "words", "tokens": {name: count}}}, scripts by size."""
    rows: dict[str, dict] = {}
    by_script: dict[str, list[str]] = defaultdict(list)
    for text in texts:
        by_script[document_script(text)].append(text)
    for script, docs in by_script.items():
        row = {
            "documents": len(docs),
            "bytes": sum(len(doc.encode("utf-8")) for doc in docs),
            "chars": sum(len(doc) for doc in docs),
            "words": sum(len(doc.split()) for doc in docs),
            "tokens": {},
        }
        for name, tokenizer in tokenizers.items():
            _, lengths = tokenizer.encode_flat(docs)
            row["tokens"][name] = int(lengths.sum())
        rows[script] = row
    return dict(sorted(rows.items(), key=lambda item: -item[1]["bytes"]))


def format_report(rows: dict[str, dict], names: list[str]) -> str:
    """A table: per script, tokens/word, tokens/byte and tokens/char for each tokenizer."""
    header = f"{'script':<12}{'docs':>6}{'bytes':>11}{'words':>9}"
    for name in names:
        header += f"  {name + ' tok/word':>18}{'tok/byte':>9}{'tok/char':>9}"
    if len(names) == 2:
        header += f"{'baseline/ours':>15}"
    lines = ["fertility on held-out documents (fewer tokens is better)", header]
    for script, row in rows.items():
        line = f"{script:<12}{row['documents']:>6}{row['bytes']:>11}{row['words']:>9}"
        for name in names:
            tokens = row["tokens"][name]
            line += f"  {tokens / max(row['words'], 1):>18.3f}{tokens / max(row['bytes'], 1):>9.3f}"
            line += f"{tokens / max(row['chars'], 1):>9.3f}"
        if len(names) == 2:
            ours, baseline = (row["tokens"][name] for name in names)
            line += f"{baseline / max(ours, 1):>15.2f}"
        lines.append(line)
    return "\n".join(lines)
