"""`megatron-llm dpo`: direct preference optimisation from (prompt, chosen, rejected) pairs.

The reference model is the `--init` weights (or `--ref`); its log-probabilities of every sequence are
computed once, in the same parallel layout, before the first step. Batch sizes count sequences: a pair is
two, so schedule.micro_batch_size and global_batch_size must be even. Metrics add reward_accuracy,
reward_margin, chosen_reward and rejected_reward; `loss` is the mean DPO loss.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_llm.posttrain import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm dpo", description=__doc__)
    run.add_common_arguments(parser)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO temperature beta (default 0.1)")
    parser.add_argument("--ref", help="reference checkpoint (default: --init)")
    return parser


def build_pair_datasets(args: argparse.Namespace, config: object, tokenizer: object, template: object):
    """(train pairs, validation pairs or None, data reports)."""
    from megatron_llm.posttrain.dpo_data import PairSequences, load_pairs

    pairs, valid, reports, pad = run.load_splits(args, config, tokenizer, template, load_pairs)
    seq = config.data.seq_length
    valid_set = PairSequences(valid, seq, pad) if valid else None
    return PairSequences(pairs, seq, pad), valid_set, reports


def _check_batches(config: object) -> None:
    from megatron_llm.errors import UsageError

    s = config.schedule
    for name in ("micro_batch_size", "global_batch_size"):
        if getattr(s, name) % 2:
            raise UsageError(f"schedule.{name}={getattr(s, name)}: DPO batches count sequences, two per pair, "
                             "so it must be even")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from megatron_llm.errors import UsageError

    if args.beta <= 0:
        raise UsageError(f"--beta must be positive, got {args.beta}")
    if not (args.init or args.ref):
        raise UsageError("dpo needs --init (the SFT checkpoint; also the reference unless --ref is given)")
    config = run.resolve_config(args)
    _check_batches(config)
    data = run.prepare_data(args, config, build_pair_datasets, "preference pair")

    from megatron_llm.posttrain.dpo_task import DPOTask

    init = Path(args.init) if args.init else None
    task = DPOTask(data, args.beta, Path(args.ref) if args.ref else init, init)
    return run.run_task(config, Path(args.run_dir), task, args.init)
