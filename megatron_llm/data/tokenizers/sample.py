"""A uniform sample of bounded size from a streamed corpus, plus a held-out part for the fertility report.

Each document gets a pseudo-random priority from a seeded generator; the sample is the documents with
the smallest priorities whose sizes fit the byte budget (a bottom-k sample by bytes), kept in a heap, so
memory is bounded by the budget whatever the corpus size. Documents whose CRC32 falls in the held-out
percentage are set aside (up to a cap) and never trained on.
"""

from __future__ import annotations

import heapq
import random
import re
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from megatron_llm.data.readers import Record
from megatron_llm.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """'2G', '500M', '64k', '1000' -> bytes."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"--sample-bytes: expected a size like 2G, 500M or 1000000, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass
class Sample:
    train: list[str]
    heldout: list[str]
    documents: int = 0
    sampled_bytes: int = 0
    total_bytes: int = 0
    skipped: Counter = field(default_factory=Counter)


def sample_corpus(
    records: Iterable[Record],
    key: str,
    budget: int,
    heldout_percent: float = 0.0,
    heldout_cap: int = 16 << 20,
    seed: int = 0,
    on_error: str = "stop",
) -> Sample:
    rng = random.Random(seed)
    heap: list[tuple[float, int, int, str]] = []
    kept = 0
    heldout: list[str] = []
    heldout_bytes = 0
    result = Sample([], heldout)
    for record in records:
        if not record.ok:
            if on_error == "stop":
                raise record.error()
            result.skipped[record.reason] += 1
            continue
        value = record.doc[key]
        text = value if isinstance(value, str) else "\n".join(value)
        encoded = text.encode("utf-8")
        size = len(encoded)
        result.documents += 1
        result.total_bytes += size
        priority = rng.random()
        if heldout_percent and zlib.crc32(encoded) % 10000 < heldout_percent * 100:
            if heldout_bytes < heldout_cap:
                heldout.append(text)
                heldout_bytes += size
            continue
        heapq.heappush(heap, (-priority, result.documents, size, text))
        kept += size
        while kept > budget and len(heap) > 1:
            kept -= heapq.heappop(heap)[2]
    result.train = [text for _, _, _, text in sorted(heap, key=lambda item: item[1])]
    result.sampled_bytes = kept
    return result
