"""The interface every per-document stage implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter


class DocStage(ABC):
    """A per-document step: it may rewrite the text, add fields to the document, or reject it.

    `process` returns `(text, None)` to keep the document (with `text` as its new text) or
    `(text, reason)` to remove it; `reason` is a short snake_case word that the report groups by.
    `counters` collects what the stage did to kept documents (e.g. redactions) for the report.
    """

    name = "stage"

    def __init__(self, label: str) -> None:
        self.label = label
        self.counters: Counter[str] = Counter()

    @abstractmethod
    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        """(new text, None) to keep the document, (text, reason) to remove it."""
