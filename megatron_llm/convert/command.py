"""`megatron-llm convert to-hf | from-hf`: checkpoints to and from Hugging Face model directories."""

from __future__ import annotations

import argparse
import sys

from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm convert", description=__doc__)
    sub = parser.add_subparsers(dest="direction", required=True)
    to_hf = sub.add_parser("to-hf", help="export a checkpoint (any TP/PP layout) as a Hugging Face model")
    to_hf.add_argument("--checkpoint", required=True, help="checkpoint root (RUN/checkpoints) or an iter_* directory")
    to_hf.add_argument("--iteration", type=int, default=None, help="step to export (default: the latest)")
    to_hf.add_argument("--output", required=True, help="new Hugging Face model directory")
    to_hf.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default=None,
                       help="weight dtype (default: the training precision)")
    to_hf.add_argument("--max-shard-size", type=float, default=2.0, help="safetensors shard size in GB")
    to_hf.add_argument("--no-progress", action="store_true", help="no per-layer progress bar")
    from_hf = sub.add_parser("from-hf", help="import a local Llama/Mistral/Qwen2 Hugging Face model")
    from_hf.add_argument("--hf", required=True, help="local Hugging Face model directory")
    from_hf.add_argument("--output", required=True, help="new checkpoint root")
    from_hf.add_argument("--tensor-parallel", type=int, default=1, help="TP size the checkpoint is written at")
    from_hf.add_argument("--pipeline-parallel", type=int, default=1, help="PP size the checkpoint is written at")
    from_hf.add_argument("--config-out", default=None, help="write the matching config YAML here")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.direction == "to-hf":
        from megatron_llm.convert.to_hf import export_to_hf

        if args.max_shard_size <= 0:
            raise UsageError(f"--max-shard-size must be positive, got {args.max_shard_size}")
        result = export_to_hf(args.checkpoint, args.output, iteration=args.iteration, dtype=args.dtype,
                              max_shard_bytes=int(args.max_shard_size * (1 << 30)), progress=not args.no_progress)
        tokenizer = f"tokenizer from {result.tokenizer}" if result.tokenizer else \
            "no tokenizer (the checkpoint was trained without one): model files only"
        print(f"exported {result.checkpoint} (step {result.step}) to {result.output}: {len(result.shards)} "
              f"safetensors shard(s), {result.total_bytes / 1e6:.1f} MB, vocab {result.vocab_size}, {tokenizer}")
        return 0
    from megatron_llm.convert.from_hf import import_from_hf

    for name in ("tensor_parallel", "pipeline_parallel"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    config = import_from_hf(args.hf, args.output, args.tensor_parallel, args.pipeline_parallel, args.config_out)
    note = f", config {args.config_out}" if args.config_out else ""
    print(f"imported {args.hf} ({config.model.num_layers} layers, vocab {config.model.vocab_size}) into "
          f"{args.output} at TP={args.tensor_parallel} PP={args.pipeline_parallel}{note}", file=sys.stdout)
    return 0
