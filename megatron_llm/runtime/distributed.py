"""Process setup: read the torchrun or SLURM environment, start torch.distributed and megatron's groups.

NCCL on CUDA machines, gloo otherwise (with the CPU compatibility layer). Under plain `srun` (one task per
process, no torchrun) the ranks come from SLURM_PROCID/SLURM_NTASKS and the rendezvous address from
MASTER_ADDR/MASTER_PORT, which the sbatch scripts export.
"""

from __future__ import annotations

import os
import random
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch

from megatron_llm.config.schema import ParallelConfig
from megatron_llm.errors import UsageError


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


def init_distributed(parallel: ParallelConfig) -> ProcessInfo:
    """Start torch.distributed (if not started) and megatron-core's TP/PP/CP/DP groups.

    Every group gets `parallel.timeout_minutes`: a collective whose peer died (its host lost, its link
    down) raises on the survivors after that long instead of hanging until the job's time limit.
    """
    from megatron.core import parallel_state

    from megatron_llm.runtime.cpu_compat import install_cpu_compat

    if not parallel.timeout_minutes > 0:
        raise UsageError(f"parallel.timeout_minutes must be > 0, got {parallel.timeout_minutes}")
    timeout = timedelta(minutes=parallel.timeout_minutes)
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
            timeout=timeout,
        )
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=parallel.tensor,
            pipeline_model_parallel_size=parallel.pipeline,
            virtual_pipeline_model_parallel_size=(
                parallel.virtual_pipeline if (parallel.virtual_pipeline or 1) > 1 else None
            ),
            context_parallel_size=parallel.context,
            distributed_timeout_minutes=parallel.timeout_minutes,  # only ever becomes a timedelta
            create_gloo_process_groups=True,
        )
    start_checkpoint_writer_helpers()
    return info


# SLURM delivers --signal/`scancel --signal` to every process of a job step (the rank and all its children),
# and the preemption signals' default action is to terminate.
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def start_checkpoint_writer_helpers() -> None:
    """Start megatron-core's checkpoint-writer helper processes now, with the preemption signals ignored.

    dist_checkpointing's writer (FileSystemWriterAsync) collects results through a multiprocessing Manager,
    a server process started at the first save and reused for the rest of the run. A preemption signal that
    reached it killed it, so the very save the signal asked for failed (BrokenPipeError, EOFError) and a
    clean preemption became a crash. An ignored disposition survives fork and exec, so the helpers started
    here (the Manager and multiprocessing's resource tracker) never die of a signal meant for the rank.
    """
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    if filesystem_async._results_queue is not None:
        return
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in PREEMPTION_SIGNALS}
    try:
        filesystem_async._get_write_results_queue()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def set_seeds(seed: int, te_rng_tracker: bool = False) -> None:
    """Python, numpy and torch seeds, and megatron's model-parallel RNG streams (TP ranks differ); with
    `te_rng_tracker` the streams live in Transformer Engine's tracker (`builder.uses_te_rng_tracker`)."""
    from megatron.core import parallel_state, tensor_parallel

    stage_seed = seed + 100 * parallel_state.get_pipeline_model_parallel_rank()
    random.seed(stage_seed)
    np.random.seed(stage_seed % 2**32)
    torch.manual_seed(stage_seed)
    # Rebuilt each time, so the tracker is always the kind asked for, whoever created one first.
    tensor_parallel.model_parallel_cuda_manual_seed(stage_seed, te_rng_tracker=te_rng_tracker, force_reset_rng=True)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
