"""Fault injection for tests: `MEGATRON_LLM_CURATE_KILL_AT=<point>` makes the process SIGKILL itself when
it reaches that point, e.g. `map-1/part-00002/docs-512` (mid-file, temporary files open) or
`minhash_dedup.buckets/band-003/before-marker` (files renamed, marker not yet written)."""

from __future__ import annotations

import os
import signal

KILL_AT = os.environ.get("MEGATRON_LLM_CURATE_KILL_AT")


def point(name: str) -> None:
    if KILL_AT is not None and name == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)
