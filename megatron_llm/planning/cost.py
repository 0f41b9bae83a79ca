"""Step time, days and dollars of a run from FLOPs, peak FLOP/s and an assumed MFU.

`--mfu` is the model-FLOPs utilisation the compute itself reaches (what a layout without pipeline
bubble or recompute would log). A layout then loses to:

- its pipeline bubble: (p - 1) / (m·v) extra time for p stages, m micro-batches, v virtual stages;
- activation recompute: the GPU also runs the recomputed forward passes, which MFU does not credit,
  so MFU drops by model FLOPs / hardware FLOPs.

Communication time is not modelled beyond what the MFU you give already includes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megatron_llm.config.schema import Config
from megatron_llm.model.flops import flops_per_token
from megatron_llm.planning.gpus import GPU

SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True)
class Timing:
    model_flops_per_step: int
    hardware_flops_per_step: int
    num_microbatches: int
    bubble: float
    mfu: float
    step_seconds: float


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


def layout_timing(config: Config, world_size: int, gpu: GPU, mfu: float) -> Timing:
    """Expected step time of the config's layout at `mfu` (see the module docstring)."""
    m, p, s = config.model, config.parallel, config.schedule
    seq = config.data.seq_length
    per_token = flops_per_token(m, seq, p.tensor)
    tokens = s.global_batch_size * seq
    dp = world_size // (p.tensor * p.pipeline * p.context)
    microbatches = s.global_batch_size // (s.micro_batch_size * dp)
    bubble = pipeline_bubble(p.pipeline, p.virtual_pipeline, microbatches)
    effective = mfu * per_token.model / per_token.hardware / (1 + bubble)
    model_flops = per_token.model * tokens
    peak = gpu.peak_flops(training_precision(config))
    return Timing(
        model_flops_per_step=model_flops,
        hardware_flops_per_step=per_token.hardware * tokens,
        num_microbatches=microbatches,
        bubble=bubble,
        mfu=effective,
        step_seconds=model_flops / (world_size * peak * effective),
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
