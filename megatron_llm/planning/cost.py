"""Step time, days and dollars of a run: the step-time model (`perf_model.py`) applied to a config.

The step time is predicted from the layout (compute at achievable GEMM throughput, attention, pipeline
bubble, exposed TP/CP/PP/DP communication, recompute, optimizer); MFU is an output. `--mfu` replaces the
kernels' modelled throughput with a measured one (the layer's model FLOPs at that fraction of peak) while
the bubble, communication, recompute and optimizer are still modelled.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megatron_llm.config.schema import Config
from megatron_llm.model.flops import flops_per_token
from megatron_llm.planning.gpus import GPU
from megatron_llm.planning.layer_split import PipelineSplit
from megatron_llm.planning.perf_model import Workload, step_time

SECONDS_PER_DAY = 86400.0
BREAKDOWN = ("compute", "recompute", "bubble", "tp_comm", "cp_comm", "pp_comm", "dp_comm", "optimizer")


@dataclass(frozen=True)
class TimingOptions:
    """What the config does not say about the run: a measured MFU, TP communication overlap, and the
    gradient reduction dtype (4: fp32 as this engine reduces; 2: megatron-core's grad_reduce_in_fp32=False)."""

    mfu: float | None = None
    tp_comm_overlap: bool = False
    grad_reduce_bytes: int = 4


@dataclass(frozen=True)
class Timing:
    model_flops_per_step: int
    hardware_flops_per_step: int
    num_microbatches: int
    bubble: float
    mfu: float
    step_seconds: float
    tflops_per_gpu: float
    tokens_per_second_per_gpu: float
    breakdown: dict


@dataclass(frozen=True)
class RunCost:
    tokens: int
    steps: int
    model_flops: float
    cluster_flops_per_second: float
    seconds: float
    days: float
    gpu_hours: float
    dollars: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def pipeline_bubble(pipeline: int, virtual: int | None, num_microbatches: int) -> float:
    return (pipeline - 1) / (num_microbatches * (virtual or 1))


def workload(config: Config, world_size: int, gpu: GPU, options: TimingOptions, split: PipelineSplit) -> Workload:
    """The step-time model's view of a config's layout (the engine reduces gradients in fp32 for bf16/fp16)."""
    m, p, s = config.model, config.parallel, config.schedule
    return Workload(
        model=m,
        seq_length=config.data.seq_length,
        global_batch=s.global_batch_size,
        micro_batch=s.micro_batch_size,
        tensor=p.tensor,
        pipeline=p.pipeline,
        virtual=p.virtual_pipeline,
        context=p.context,
        data=world_size // (p.tensor * p.pipeline * p.context),
        precision=training_precision(config),
        gpu=gpu,
        split=split,
        recompute=m.recompute,
        recompute_layers=m.recompute_num_layers if m.recompute == "full" and m.recompute_method == "block" else None,
        distributed_optimizer=p.distributed_optimizer,
        tp_comm_overlap=options.tp_comm_overlap,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather is not False and p.distributed_optimizer,  # null: on (GPU)
        grad_reduce_bytes=options.grad_reduce_bytes,
        mfu=options.mfu,
    )


def layout_timing(
    config: Config, world_size: int, gpu: GPU, options: TimingOptions, split: PipelineSplit
) -> Timing:
    """Predicted step time of the config's layout and its parts."""
    w = workload(config, world_size, gpu, options, split)
    predicted = step_time(w)
    per_token = flops_per_token(config.model, w.seq_length, w.tensor)
    tokens = w.global_batch * w.seq_length
    return Timing(
        model_flops_per_step=per_token.model * tokens,
        hardware_flops_per_step=per_token.hardware * tokens,
        num_microbatches=predicted.num_microbatches,
        bubble=predicted.bubble_fraction,
        mfu=predicted.mfu,
        step_seconds=predicted.total,
        tflops_per_gpu=predicted.tflops_per_gpu,
        tokens_per_second_per_gpu=tokens / predicted.total / world_size,
        breakdown={name: getattr(predicted, name) for name in BREAKDOWN},
    )


def training_precision(config: Config) -> str:
    return "fp8" if config.precision.fp8 is not None else config.precision.dtype


def run_cost(
    timing: Timing, tokens: int, tokens_per_step: int, world_size: int, price_per_gpu_hour: float | None
) -> RunCost:
    """Totals for training on `tokens` tokens (rounded up to whole steps)."""
    steps = math.ceil(tokens / tokens_per_step)
    seconds = steps * timing.step_seconds
    gpu_hours = seconds / 3600 * world_size
    return RunCost(
        tokens=steps * tokens_per_step,
        steps=steps,
        model_flops=float(steps) * timing.model_flops_per_step,
        cluster_flops_per_second=timing.model_flops_per_step / timing.step_seconds,
        seconds=seconds,
        days=seconds / SECONDS_PER_DAY,
        gpu_hours=gpu_hours,
        dollars=gpu_hours * price_per_gpu_hour if price_per_gpu_hour is not None else None,
    )
