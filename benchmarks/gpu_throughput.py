"""Training throughput on this machine's GPUs, against the fastest published Llama-3-8B H100 recipe.

    python benchmarks/gpu_throughput.py --config examples/configs/llama-8b.yaml --gpus 8
    python benchmarks/gpu_throughput.py --config examples/configs/llama-8b.yaml --gpus 1 --layers 4

Runs the config's model and layout on synthetic tokens (data.synthetic; no shards, no tokenizer, no
checkpoints, no evaluation): --warmup steps (10), then --steps timed steps (30). Prints tokens/s per GPU,
TFLOP/s per GPU (Megatron-LM's FLOP accounting, the one `plan` and the trainer's metrics use: recompute not
counted), MFU against the GPU's dense BF16 peak, the peak memory any rank allocated, and the ratio to the
published 744 TFLOP/s per GPU of Megatron-Bridge's Llama-3-8B FP8 recipe on 8xH100. `--layers K` keeps the
width and shrinks the depth so that one GPU can hold the model (the ratio then compares unlike models).

It starts one process per GPU with torchrun and the recipe's environment (CUDA_DEVICE_MAX_CONNECTIONS and
the NCCL, allocator and Transformer Engine variables; values already set are kept). On a machine without
CUDA it exits with status 2 before starting anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE_TFLOPS = 744.0  # Megatron-Bridge perf recipe, Llama-3-8B, 8xH100, FP8 current scaling
REFERENCE = "Megatron-Bridge Llama-3-8B FP8 on 8xH100: 744 TFLOP/s/GPU (14,451 tokens/s/GPU)"
REPO = Path(__file__).resolve().parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "examples/configs/llama-8b.yaml"), help="YAML config")
    parser.add_argument("--gpus", type=int, help="GPUs to use (default: all visible)")
    parser.add_argument("--layers", type=int, help="train only this many transformer layers (model.num_layers)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    parser.add_argument("--gpu", default="h100", help="GPU type for the MFU peak (planner's table; default h100)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field (repeatable)")
    parser.add_argument("--json", action="store_true", help="also print the result as one JSON line")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser


def _fail(message: str) -> int:
    print(f"gpu_throughput: error: {message}", file=sys.stderr)
    return 2


def _overrides(args: argparse.Namespace) -> list[str]:
    total = args.warmup + args.steps
    fixed = [
        "data.synthetic=true", "data.paths=[]", "data.tokenizer=null", f"schedule.train_iters={total}",
        "schedule.train_tokens=null", "schedule.eval_iters=0", "schedule.eval_interval=null",
        "schedule.exit_interval=null", "checkpoint.save_interval=null", "logging.tensorboard=false",
        "logging.progress=false", f"logging.log_interval={args.steps}", "optim.warmup_iters=0",
    ]
    if args.layers:
        fixed.append(f"model.num_layers={args.layers}")
    return fixed + list(args.overrides)


def _launch(args: argparse.Namespace, argv: list[str], visible: int) -> int:
    from megatron_llm.config.loader import load_config
    from megatron_llm.config.validation import validate
    from megatron_llm.runtime.gpu_env import apply_recipe_environment
    from megatron_llm.runtime.hardware import detect_platform

    gpus = args.gpus or visible
    if gpus > visible:
        return _fail(f"--gpus {gpus}: this machine has {visible} CUDA device(s)")
    config = load_config(args.config, _overrides(args))
    validate(config, gpus, detect_platform(), reads_data_paths=False)
    env = dict(os.environ)
    added = apply_recipe_environment(config, detect_platform(), env)
    for key, value in sorted(added.items()):
        print(f"environment: {key}={value}")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               str(Path(__file__).resolve()), "--worker", *argv]
    return subprocess.run(command, env=env, check=False).returncode


def _worker(args: argparse.Namespace) -> int:
    import torch

    from megatron_llm.config.loader import load_config
    from megatron_llm.model.flops import flops_per_step
    from megatron_llm.planning.gpus import lookup_gpu
    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.setup import build_trainer

    config = load_config(args.config, _overrides(args))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = build_trainer(config, Path(run_dir))
        world = torch.distributed.get_world_size()
        trainer.train_iters = args.warmup
        trainer.fit()
        torch.cuda.synchronize()
        torch.distributed.barrier()
        begin = time.perf_counter()
        trainer.train_iters = args.warmup + args.steps
        trainer.fit()
        torch.cuda.synchronize()
        torch.distributed.barrier()
        seconds = time.perf_counter() - begin
        peak = torch.tensor([torch.cuda.max_memory_allocated()], dtype=torch.float64, device="cuda")
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    s = config.schedule
    tokens = s.global_batch_size * config.data.seq_length * args.steps
    flops = flops_per_step(config.model, config.data.seq_length, s.global_batch_size, config.parallel.tensor)
    tflops = flops * args.steps / seconds / world / 1e12
    bf16_peak = lookup_gpu(args.gpu).peak_flops("bf16") / 1e12
    result = {
        "gpus": world, "layers": config.model.num_layers, "steps": args.steps, "seconds": seconds,
        "tokens_per_s_per_gpu": tokens / seconds / world, "tflops_per_gpu": tflops, "mfu": tflops / bf16_peak,
        "peak_memory_gib": float(peak.item()) / 2**30, "ratio_to_reference": tflops / REFERENCE_TFLOPS,
    }
    if torch.distributed.get_rank() == 0:
        p = config.parallel
        print(f"model: {config.model.num_layers} layers, hidden {config.model.hidden_size}; layout TP={p.tensor} "
              f"PP={p.pipeline} CP={p.context} DP={world // (p.tensor * p.pipeline * p.context)}; "
              f"{config.precision.dtype}{' + FP8 ' + config.precision.fp8 if config.precision.fp8 else ''}; "
              f"global batch {s.global_batch_size} x {config.data.seq_length} tokens")
        print(f"timed: {args.steps} steps in {seconds:.2f} s after {args.warmup} warm-up steps on {world} GPU(s)")
        print(f"tokens/s/GPU:   {result['tokens_per_s_per_gpu']:,.0f}")
        print(f"TFLOP/s/GPU:    {tflops:.1f}")
        print(f"MFU:            {result['mfu']:.1%} of {bf16_peak:.1f} TFLOP/s ({args.gpu} dense BF16)")
        print(f"peak memory:    {result['peak_memory_gib']:.2f} GiB (largest rank)")
        print(f"vs reference:   {result['ratio_to_reference']:.3f} x  ({REFERENCE})")
        if args.layers:
            print(f"note: --layers {args.layers} trains a shallower model than the reference's 32 layers")
        if args.json:
            print(json.dumps(result))
    destroy_distributed()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.gpus is not None and args.gpus < 1:
        return _fail(f"--gpus must be at least 1, got {args.gpus}")
    if not Path(args.config).is_file():
        return _fail(f"--config {args.config}: no such file")
    import torch

    if not torch.cuda.is_available():
        return _fail("no CUDA device on this machine: this benchmark measures GPU training throughput "
                     "(run it on an H100 node; CPU runs are measured by benchmarks/engine_overhead.py)")
    if args.worker:
        return _worker(args)
    from megatron_llm.errors import UsageError

    try:
        return _launch(args, argv, torch.cuda.device_count())
    except UsageError as error:
        return _fail(str(error))


if __name__ == "__main__":
    sys.exit(main())
