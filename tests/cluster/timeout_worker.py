"""Worker for test_collective_timeout.py: join a 2-rank gloo group through init_distributed, then rank 0
all-reduces while rank 1 never joins the collective (it waits for its stdin to close)."""

from __future__ import annotations

import sys

import torch

from megatron_llm.config.schema import ParallelConfig
from megatron_llm.runtime.distributed import init_distributed

info = init_distributed(ParallelConfig(timeout_minutes=float(sys.argv[1])))
if info.rank == 0:
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except RuntimeError as error:
        print(f"collective failed: {error}", flush=True)
        sys.exit(1)
    print("collective completed", flush=True)
else:
    sys.stdin.read()
