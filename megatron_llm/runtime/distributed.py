"""Process setup: read the torchrun or SLURM environment, start torch.distributed and megatron's groups.

NCCL on CUDA machines, gloo otherwise (with the CPU compatibility layer). Under plain `srun` (one task per
process, no torchrun) the ranks come from SLURM_PROCID/SLURM_NTASKS and the rendezvous address from
MASTER_ADDR/MASTER_PORT, which the sbatch scripts export.
"""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from megatron_llm.config.schema import ParallelConfig


@dataclass(frozen=True)
class ProcessInfo:
    rank: int
    world_size: int
    local_rank: int


def process_info() -> ProcessInfo:
    """Rank, world size and local rank from torchrun's variables, else SLURM's, else a single process."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return ProcessInfo(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and "MASTER_ADDR" in env:
        return ProcessInfo(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return ProcessInfo(0, 1, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_distributed(parallel: ParallelConfig, timeout_minutes: int = 30) -> ProcessInfo:
    """Start torch.distributed (if not started) and megatron-core's TP/PP/CP/DP groups."""
    from megatron.core import parallel_state

    from megatron_llm.runtime.cpu_compat import install_cpu_compat

    info = process_info()
    cpu = install_cpu_compat()
    if not torch.distributed.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" not in os.environ:
            # Nobody else needs to find a lone process: a free port lets several runs share a machine.
            os.environ["MASTER_PORT"] = str(_free_port()) if info.world_size == 1 else "29500"
        if not cpu:
            torch.cuda.set_device(info.local_rank)
        torch.distributed.init_process_group(
            backend="gloo" if cpu else "nccl",
            rank=info.rank,
            world_size=info.world_size,
            timeout=timedelta(minutes=timeout_minutes),
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor,
            pipeline_model_parallel_size=parallel.pipeline,
            virtual_pipeline_model_parallel_size=(
                parallel.virtual_pipeline if (parallel.virtual_pipeline or 1) > 1 else None
            ),
            context_parallel_size=parallel.context,
            distributed_timeout_minutes=timeout_minutes,
            create_gloo_process_groups=True,
        )
    return info


def set_seeds(seed: int) -> None:
    """Python, numpy and torch seeds, and megatron's model-parallel RNG streams (TP ranks differ)."""
    from megatron.core import parallel_state, tensor_parallel

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed % 2**32)
    torch.manual_seed(stage_seed)
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
