"""Normalise text: Unicode normal form, control characters, whitespace runs."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from megatron_llm.data.curate.stages.options import require
from megatron_llm.data.curate.stages.stage import DocStage

_FORMS = ("NFC", "NFKC", "NFD", "NFKD")
_HORIZONTAL_SPACE = re.compile(r"[^\S\n]{2,}|[^\S \n]")
_TRAILING_SPACE = re.compile(r"[^\S\n]+(?=\n|\Z)")
_ASCII_ODD_SPACE = ("  ", "\t", "\x0b", "\x0c", "\r")
# Unicode's control characters (category Cc) are exactly U+0000-U+001F and U+007F-U+009F. Tab and newline
# stay; CR, NEL and the line/paragraph separators become newlines (CRLF is folded first); the BOM goes.
_CONTROL_TABLE: dict[int, int | None] = {cp: None for cp in [*range(0x20), *range(0x7F, 0xA0)] if cp not in (9, 10)}
_CONTROL_TABLE.update({0xFEFF: None, 0x0D: 0x0A, 0x85: 0x0A, 0x2028: 0x0A, 0x2029: 0x0A})


def remove_controls(text: str) -> str:
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
    return text.translate(_CONTROL_TABLE)


@dataclass
class NormalizeParams:
    form: str | None = "NFC"  # Unicode normal form, or null to leave it
    remove_control: bool = True  # drop control characters except \t and \n; CR, CRLF, U+2028/9 become \n
    collapse_spaces: bool = True  # runs of spaces/tabs/other blanks become one space (off for code)
    strip_line_ends: bool = True  # remove whitespace before each newline
    max_blank_lines: int | None = 1  # longest run of empty lines kept; null keeps all
    strip: bool = True  # remove leading and trailing whitespace of the whole text

    def check(self) -> None:
        require(self.form is None or self.form in _FORMS, "form", f"must be one of {', '.join(_FORMS)} or null")
        require(self.max_blank_lines is None or self.max_blank_lines >= 0, "max_blank_lines", "must be >= 0")


def normalize_text(text: str, params: NormalizeParams) -> str:
    """`text` normalised as `params` says. The regexes run only when a cheap test says they could
    change something (most text has no double spaces or tabs)."""
    if params.form and not text.isascii() and not unicodedata.is_normalized(params.form, text):
        text = unicodedata.normalize(params.form, text)
    if params.remove_control:
        text = remove_controls(text)
    if params.collapse_spaces and (not text.isascii() or any(s in text for s in _ASCII_ODD_SPACE)):
        text = _HORIZONTAL_SPACE.sub(" ", text)
    if params.strip_line_ends and (not text.isascii() or " \n" in text or "\t\n" in text or text[-1:].isspace()):
        text = _TRAILING_SPACE.sub("", text)
    if params.max_blank_lines is not None:
        keep = params.max_blank_lines + 1
        text = re.sub(f"\n{{{keep + 1},}}", "\n" * keep, text)
    if params.strip:
        text = text.strip()
    return text


class NormalizeStage(DocStage):
    """Rewrites the text; removes documents that end up empty (reason `empty`)."""

    name = "normalize"

    def __init__(self, label: str, params: NormalizeParams) -> None:
        super().__init__(label)
        self.params = params

    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        new = normalize_text(text, self.params)
        if new != text:
            self.counters["changed"] += 1
        if not new.strip():
            return new, "empty"
        return new, None
