"""Real text every machine has, for tests and benchmarks: the Python standard library's docstrings and
source, and near-duplicates planted in it by word edits (so the true answer is known)."""

from __future__ import annotations

import ast
import random
import sysconfig
from dataclasses import dataclass
from pathlib import Path


def stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "test" not in p.parts and "site-packages" not in p.parts)


def stdlib_docstrings(count: int, min_chars: int = 400, max_chars: int = 2000) -> list[str]:
    """Up to `count` distinct docstrings of at least `min_chars` (cut at `max_chars`), in a fixed order."""
    seen: set[str] = set()
    out: list[str] = []
    for path in stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if doc and len(doc) >= min_chars and doc not in seen:
                seen.add(doc)
                out.append(doc[:max_chars])
                if len(out) >= count:
                    return out
    return out


def stdlib_chunks(count: int, size: int = 1000) -> list[str]:
    """`count` consecutive `size`-character pieces of standard-library source (about 1 KB documents)."""
    out: list[str] = []
    for path in stdlib_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for start in range(0, len(text) - size, size):
            out.append(text[start : start + size])
            if len(out) >= count:
                return out
    return out


def edit_words(text: str, rate: float, rng: random.Random, vocabulary: list[str]) -> str:
    """`text` with round(rate * words) random word substitutions, deletions and insertions."""
    words = text.split()
    for _ in range(max(1, round(rate * len(words)))):
        action = rng.random()
        position = rng.randrange(len(words))
        if action < 0.5:
            words[position] = rng.choice(vocabulary)
        elif action < 0.75 and len(words) > 1:
            del words[position]
        else:
            words.insert(position, rng.choice(vocabulary))
    return " ".join(words)


@dataclass
class PlantedCorpus:
    texts: list[str]  # in corpus order
    families: list[list[int]]  # indices of an original and its edited copies


def planted_corpus(
    originals: list[str], copied: int, rates: list[float], seed: int = 0, max_copies: int = 1
) -> PlantedCorpus:
    """The originals plus, for `copied` of them, 1 to `max_copies` copies, each with a word-edit rate drawn
    from `rates`; everything shuffled so an original is not always the first of its family."""
    rng = random.Random(seed)
    vocabulary = sorted({w for text in originals[:200] for w in text.split()})
    items: list[tuple[int, str]] = [(i, text) for i, text in enumerate(originals)]
    for family in rng.sample(range(len(originals)), copied):
        for _ in range(rng.randint(1, max_copies)):
            items.append((family, edit_words(originals[family], rng.choice(rates), rng, vocabulary)))
    rng.shuffle(items)
    families: dict[int, list[int]] = {}
    for index, (family, _) in enumerate(items):
        families.setdefault(family, []).append(index)
    return PlantedCorpus([text for _, text in items], [f for f in families.values() if len(f) > 1])
