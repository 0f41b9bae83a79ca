"""The `pii` stage: redact e-mail addresses, public IP addresses, phone numbers and payment-card numbers.

Candidates are found by regex and then validated: IPs with `ipaddress` (only globally routable ones are
redacted; private, loopback, link-local, documentation and other reserved ranges are left alone), card
numbers by issuer prefix, length and the Luhn check, e-mail domains by having a letter-only top-level
domain that is not an image/file extension (`icon@2x.png` is a file name, not an address).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from megatron_llm.data.curate.stages.options import require
from megatron_llm.data.curate.stages.stage import DocStage

PII_TYPES = ("email", "ip_address", "phone_number", "credit_card")
DEFAULT_PLACEHOLDERS = {
    "email": "<EMAIL_ADDRESS>",
    "ip_address": "<IP_ADDRESS>",
    "phone_number": "<PHONE_NUMBER>",
    "credit_card": "<CREDIT_CARD_NUMBER>",
}
_FILE_EXTENSIONS = frozenset("png jpg jpeg gif svg webp bmp ico tif tiff pdf js css py json html htm txt".split())

_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    r"([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*)"
    r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+([A-Za-z]{2,24}))"
    r"(?![\w-]|\.[A-Za-z0-9])"
)
# The patterns below start with a plain character class, which lets the regex engine skip quickly to
# candidate positions; what may not precede a match (a lookbehind would defeat that) is checked in
# Python by `_starts_cleanly`.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?:{_OCTET}\.){{3}}{_OCTET}(?![\w.]\w)")
_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{1,4}:|:){2,8}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])")
_CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?:"
    r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]?\d{2,4}){1,4}"  # international: +44 20 7946 0958
    r"|\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4}"  # 555-123-4567
    r")(?![\w-]|\.\d)"
)
_NOT_BEFORE = {"ip_address": ".:", "credit_card": "-", "phone_number": "+"}
_CARD_PREFIXES = re.compile(r"^(?:4|5[1-5]|2[2-7]|3[47]|3[068]|35|6011|64[4-9]|65|62)")


def _starts_cleanly(match: re.Match, forbidden: str) -> bool:
    """No word character (nor one of `forbidden`) right before the match."""
    start = match.start()
    if start == 0:
        return True
    before = match.string[start - 1]
    return not (before.isalnum() or before == "_" or before in forbidden)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a digit string."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_card(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    separators = {c for c in match if c in " -"}
    if len(separators) > 1 or not 13 <= len(digits) <= 19:
        return False
    return bool(_CARD_PREFIXES.match(digits)) and luhn_ok(digits)


def _is_public_ip(candidate: str) -> bool:
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if address.version == 6 and sum(1 for group in candidate.split(":") if group) < 3:
        return False  # `a::b` or `dead::beef` is far more often code (C++ scopes) than an address
    return address.is_global


def _is_email(match: re.Match) -> bool:
    return match.group(3).lower() not in _FILE_EXTENSIONS


def _phone_ok(match: str) -> bool:
    digits = sum(c.isdigit() for c in match)
    return 7 <= digits <= 15


@dataclass
class PiiParams:
    email: bool = True
    ip_address: bool = True
    phone_number: bool = True
    credit_card: bool = True
    placeholders: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PLACEHOLDERS))

    def check(self) -> None:
        unknown = set(self.placeholders) - set(PII_TYPES)
        require(not unknown, "placeholders", f"unknown type(s) {sorted(unknown)} (types: {', '.join(PII_TYPES)})")


class PiiRedactor:
    """Replaces each kind of PII with its placeholder and counts the replacements."""

    def __init__(self, params: PiiParams) -> None:
        self.placeholders = {**DEFAULT_PLACEHOLDERS, **params.placeholders}
        self.enabled = [kind for kind in PII_TYPES if getattr(params, kind)]

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        counts: dict[str, int] = {}
        # Cards before phones (a card number also looks like a phone number); e-mail before IPs
        # (an address may sit at a bracketed IP literal).
        for kind in ("email", "credit_card", "phone_number", "ip_address"):
            if kind in self.enabled:
                text, n = self._redact_kind(kind, text)
                if n:
                    counts[kind] = n
        return text, counts

    def _redact_kind(self, kind: str, text: str) -> tuple[str, int]:
        placeholder = self.placeholders[kind]
        count = 0

        def substitute(match: re.Match, valid) -> str:
            nonlocal count
            if valid(match):
                count += 1
                return placeholder
            return match.group(0)

        if kind == "email":
            if "@" in text:
                text = _EMAIL.sub(lambda m: substitute(m, _is_email), text)
            return text, count
        before = _NOT_BEFORE[kind]
        if kind == "credit_card":
            valid = lambda m: _starts_cleanly(m, before) and _is_card(m.group(0))  # noqa: E731
            text = _CARD.sub(lambda m: substitute(m, valid), text)
        elif kind == "phone_number":
            valid = lambda m: _starts_cleanly(m, before) and _phone_ok(m.group(0))  # noqa: E731
            text = _PHONE.sub(lambda m: substitute(m, valid), text)
        else:
            valid = lambda m: _starts_cleanly(m, before) and _is_public_ip(m.group(0))  # noqa: E731
            text = _IPV4.sub(lambda m: substitute(m, valid), text)
            if ":" in text:
                text = _IPV6.sub(lambda m: substitute(m, valid), text)
        return text, count


class PiiStage(DocStage):
    """Never removes a document; counts redactions by type."""

    name = "pii"

    def __init__(self, label: str, params: PiiParams) -> None:
        super().__init__(label)
        self.redactor = PiiRedactor(params)

    def process(self, text: str, doc: dict) -> tuple[str, str | None]:
        text, counts = self.redactor.redact(text)
        for kind, n in counts.items():
            self.counters[kind] += n
        if counts:
            self.counters["documents_redacted"] += 1
        return text, None
