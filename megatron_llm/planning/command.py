"""`megatron-llm plan`: parameters, FLOPs, memory per GPU, parallel layouts, time and cost of a run.

Reads the same config `train` uses; pure arithmetic (no torch import), so it answers in about a second.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

from megatron_llm.config.loader import load_config
from megatron_llm.config.schema import Config
from megatron_llm.config.validation import DTYPES, RECOMPUTE
from megatron_llm.errors import UsageError
from megatron_llm.planning.cost import TimingOptions
from megatron_llm.planning.document import PlanRequest, build_plan
from megatron_llm.planning.gpus import PRECISIONS, gpu_names, lookup_gpu
from megatron_llm.planning.report import render
from megatron_llm.planning.units import batch_sequences, parse_count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm plan",
        description="Exact parameters, FLOPs, per-GPU memory of every parallel layout, time and cost of a "
        "training run, from the config `train` uses.",
    )
    parser.add_argument("--config", help="YAML config (defaults: the built-in tiny model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set model.num_layers=40 (repeatable)")
    parser.add_argument("--tokens", help="tokens to train on, e.g. 1T or 300B (default: the config's schedule)")
    parser.add_argument("--gpus", type=int, required=True, help="number of GPUs")
    parser.add_argument("--gpu", default="h100", help=f"GPU type (default h100): {', '.join(gpu_names())}")
    parser.add_argument("--gpu-memory-gib", type=float, help="override the GPU's memory (GiB)")
    parser.add_argument("--peak-tflops", type=float, help="override the GPU's dense peak TFLOP/s")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node sharing its network (default 8)")
    parser.add_argument("--network-gbps", type=float,
                        help="network bandwidth per node in Gb/s (default: the GPU's reference node, e.g. 3200 = "
                        "8 x 400 Gb/s InfiniBand for DGX H100)")
    parser.add_argument("--tp-comm-overlap", action="store_true",
                        help="model TP communication overlapped with GEMMs (Transformer Engine userbuffers)")
    parser.add_argument("--grad-reduce-dtype", choices=("fp32", "bf16"), default="fp32",
                        help="gradient buffer and reduction dtype (default fp32, what `train` does; bf16 models "
                        "megatron-core's grad_reduce_in_fp32=False, as NVIDIA's performance recipes run)")
    parser.add_argument("--precision", help=f"override precision: {', '.join(PRECISIONS)}")
    parser.add_argument("--mfu", type=float,
                        help="a measured model FLOPs utilisation for the kernels, instead of the step-time "
                        "model's (bubble, communication, recompute and optimizer are still modelled)")
    parser.add_argument("--price-per-gpu-hour", type=float, help="USD per GPU-hour, for the cost")
    parser.add_argument("--seq-length", type=int, help="override data.seq_length")
    parser.add_argument("--global-batch-tokens", help="global batch in tokens, e.g. 4M (= 4x2^20 when that is a "
                        "whole number of sequences)")
    parser.add_argument("--top", type=int, default=10, help="layouts to list in each table (default 10)")
    parser.add_argument("--explain", action="store_true",
                        help="the predicted step time of each listed layout part by part, and for each rejected "
                        "layout the single change that makes it fit")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON document")
    return parser


def _apply_flags(config: Config, args: argparse.Namespace) -> Config:
    data, schedule, precision = config.data, config.schedule, config.precision
    if args.seq_length is not None:
        if args.seq_length < 1:
            raise UsageError(f"--seq-length must be positive, got {args.seq_length}")
        data = dataclasses.replace(data, seq_length=args.seq_length)
    if args.global_batch_tokens is not None:
        sequences = batch_sequences(args.global_batch_tokens, data.seq_length)
        schedule = dataclasses.replace(schedule, global_batch_size=sequences)
    if args.precision is not None:
        if args.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
        if args.precision == "fp8":
            precision = dataclasses.replace(precision, dtype="bf16", fp8=precision.fp8 or "delayed")
        else:  # without FP8 there are no FP8 primary weights
            precision = dataclasses.replace(precision, dtype=args.precision, fp8=None, fp8_param_gather=False)
    return dataclasses.replace(config, data=data, schedule=schedule, precision=precision)


def _check(config: Config, args: argparse.Namespace) -> None:
    if config.precision.dtype not in DTYPES:
        raise UsageError(f"precision.dtype must be one of {', '.join(DTYPES)}, got {config.precision.dtype!r}")
    if config.model.recompute not in RECOMPUTE:
        raise UsageError(f"model.recompute must be one of {', '.join(RECOMPUTE)}, got {config.model.recompute!r}")
    if config.data.seq_length > config.model.max_position_embeddings:
        raise UsageError(
            f"data.seq_length={config.data.seq_length} exceeds model.max_position_embeddings="
            f"{config.model.max_position_embeddings}"
        )
    if config.model.vocab_size is None:
        raise UsageError("model.vocab_size is not set: plan needs it (--set model.vocab_size=N)")
    if args.gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {args.gpus}")
    if args.gpus_per_node is not None and args.gpus_per_node < 1:
        raise UsageError(f"--gpus-per-node must be at least 1, got {args.gpus_per_node}")
    if args.mfu is not None and not 0 < args.mfu <= 1:
        raise UsageError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.price_per_gpu_hour is not None and args.price_per_gpu_hour < 0:
        raise UsageError(f"--price-per-gpu-hour must not be negative, got {args.price_per_gpu_hour}")
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")


def _tokens(config: Config, text: str | None) -> int:
    if text is not None:
        return parse_count(text, "--tokens")
    s = config.schedule
    if s.train_tokens is not None:
        return s.train_tokens
    if s.train_iters is not None:
        return s.train_iters * s.global_batch_size * config.data.seq_length
    raise UsageError("--tokens is required when the config sets neither schedule.train_tokens nor train_iters")


def make_plan(argv: list[str]) -> tuple[dict, bool]:
    """The plan document for a command line, and whether JSON was asked for."""
    args = build_parser().parse_args(argv)
    config = _apply_flags(load_config(args.config, args.overrides), args)
    _check(config, args)
    gpu = lookup_gpu(args.gpu, args.gpu_memory_gib, args.peak_tflops, args.network_gbps, args.gpus_per_node)
    request = PlanRequest(
        config=config,
        config_path=args.config,
        gpus=args.gpus,
        gpu=gpu,
        timing=TimingOptions(mfu=args.mfu, tp_comm_overlap=args.tp_comm_overlap,
                             grad_reduce_bytes=4 if args.grad_reduce_dtype == "fp32" else 2),
        tokens=_tokens(config, args.tokens),
        price_per_gpu_hour=args.price_per_gpu_hour,
        top=args.top,
        explain=args.explain,
    )
    return build_plan(request), args.json


def _finite(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str]) -> int:
    plan, as_json = make_plan(argv)
    if as_json:
        print(json.dumps(_finite(plan), indent=2))
    else:
        print(render(plan), end="")
    return 0
