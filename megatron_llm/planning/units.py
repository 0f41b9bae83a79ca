"""Parsing counts like `1T` or `4M` from the command line, and printing big numbers readably."""

from __future__ import annotations

import re

from megatron_llm.errors import UsageError

DECIMAL = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
BINARY = {"KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
_COUNT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]{0,2})\s*$")


def parse_count(text: str, flag: str, binary: bool = False) -> int:
    """`1T` = 10^12, `2.5B` = 2.5x10^9, `4Mi` = 4x2^20; `binary=True` reads K/M/G/T as powers of 2."""
    match = _COUNT.match(text)
    if not match:
        raise UsageError(f"{flag}: expected a number with an optional K/M/B/T suffix, got {text!r}")
    number, suffix = float(match.group(1)), match.group(2).upper()
    if suffix in BINARY:
        scale = BINARY[suffix]
    elif suffix in DECIMAL:
        scale = BINARY.get(suffix + "I", DECIMAL[suffix]) if binary and suffix not in ("", "B") else DECIMAL[suffix]
    else:
        raise UsageError(f"{flag}: unknown suffix {match.group(2)!r} in {text!r} (use K, M, B, T or Ki, Mi, Gi)")
    value = number * scale
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, got {text!r}")
    return int(round(value))


def batch_sequences(text: str, seq_length: int) -> int:
    """Sequences per global batch from `--global-batch-tokens`.

    "4M tokens" in LLM papers means 4x2^20 = 1024 x 4096: when the decimal reading is not a whole
    number of sequences but the binary one is, the binary one is meant.
    """
    decimal = parse_count(text, "--global-batch-tokens")
    if decimal % seq_length == 0:
        return decimal // seq_length
    binary = parse_count(text, "--global-batch-tokens", binary=True)
    if binary % seq_length == 0:
        return binary // seq_length
    return max(1, round(decimal / seq_length))


def human(value: float, unit: str = "") -> str:
    """1.23e9 -> '1.23 B' style (K, M, B, T) for counts; anything bigger in scientific notation."""
    for scale, suffix in ((10**12, "T"), (10**9, "B"), (10**6, "M"), (10**3, "K")):
        if abs(value) >= scale:
            if abs(value) >= 1000 * 10**12:
                return f"{value:.3e}{unit}"
            return f"{value / scale:.2f} {suffix}{unit}"
    return f"{value:g}{unit}"
