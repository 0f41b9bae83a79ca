"""Worker for test_collective_timeout.py: join a 2-rank gloo group through init_distributed, then rank 0
all-reduces while rank 1 never joins the collective (it waits for its stdin to close)."""

from __future__ import annotations

import sys

import torch

from megatron_llm.config.schema import ParallelConfig
from megatron_llm.runtime.distributed import init_distributed


def main(timeout_minutes: float) -> int:
    info = init_distributed(ParallelConfig(timeout_minutes=timeout_minutes))
    if info.rank != 0:
        sys.stdin.read()
        return 0
    try:
        torch.distributed.all_reduce(torch.ones(1))
    except RuntimeError as error:
        print(f"collective failed: {error}", flush=True)
        return 1
    print("collective completed", flush=True)
    return 0


if __name__ == "__main__":  # multiprocessing's spawn re-imports this file in its helper processes
    sys.exit(main(float(sys.argv[1])))
