"""`megatron-llm sft`: supervised fine-tuning on chat JSONL, on the pre-training engine.

Conversations are rendered with the tokenizer's chat template (or the default one, which is then stored
with a copy of the tokenizer in the run directory), the loss is taken on assistant tokens only, and samples
are packed (attention confined to each conversation) or padded, in a seeded order. Checkpoints, metrics,
validation and parallel layouts are the pre-training ones.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_llm.posttrain import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm sft", description=__doc__)
    run.add_common_arguments(parser)
    parser.add_argument("--packing", choices=("pack", "pad"), default="pack",
                        help="pack several conversations per sample (default) or one padded conversation each")
    return parser


def build_sft_datasets(args: argparse.Namespace, config: object, tokenizer: object, template: object):
    """(train dataset, validation dataset or None, data reports)."""
    from megatron_llm.posttrain.packing import SFTDataset
    from megatron_llm.posttrain.sft_data import load_conversations

    train, valid, reports, pad = run.load_splits(args, config, tokenizer, template, load_conversations)
    seq, packing = config.data.seq_length, args.packing == "pack"
    valid_set = SFTDataset(valid, seq, pad, packing) if valid else None
    return SFTDataset(train, seq, pad, packing), valid_set, reports


def _check_packing(config: object, platform: object) -> None:
    from megatron_llm.errors import UsageError
    from megatron_llm.model.builder import use_transformer_engine

    if use_transformer_engine(config, platform):
        # TE's causal attention ignores an arbitrary mask; packed sequences would attend across conversations.
        raise UsageError("--packing pack needs the local attention (model.transformer_impl=local); with "
                         "Transformer Engine use --packing pad")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = run.resolve_config(args)
    check = _check_packing if args.packing == "pack" else None
    data = run.prepare_data(args, config, build_sft_datasets, "conversation", check)

    from megatron_llm.posttrain.sft_task import SFTTask

    return run.run_task(config, Path(args.run_dir), SFTTask(data, args.packing), args.init)
