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

    import torch

    from megatron_llm.posttrain.dpo_loss import DPOForwardStep, DPOMetricsHook
    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.loop import setup, train
    from megatron_llm.training.metrics import MetricsWriter

    run_dir = Path(args.run_dir)
    trainer = setup(config, run_dir)
    rank0 = torch.distributed.get_rank() == 0
    try:
        reference = reference_table(trainer, args, [data.train, data.valid])
        if data.default_template:
            run.store_default_template(config, run_dir, write=rank0)
        torch.distributed.barrier()
        trainer.train_data = data.train
        trainer.valid_data = data.valid
        step_func = DPOForwardStep(args.beta, reference)
        trainer.forward_step_func = step_func
        run.report_data(data.reports, run_dir, rank0)
        if rank0:
            print(f"dpo: {len(data.train) // 2} pairs, beta {args.beta}, {config.schedule.train_iters} steps",
                  flush=True)
        writer = MetricsWriter(run_dir, rank0, config.logging.tensorboard)
        train(trainer, [DPOMetricsHook(step_func, writer, config.logging.log_interval)])
    finally:
        destroy_distributed()
    return trainer.state.exit_code


def reference_table(trainer: object, args: argparse.Namespace, datasets: list) -> dict:
    """Reference log-probabilities of every sequence; leaves the policy's weights in the model.

    `setup` already resumed the run's own checkpoint if it has one. The reference weights are loaded,
    every sequence scored, then the policy's weights restored: the resumed checkpoint, or `--init`.
    """
    from megatron_llm.posttrain.dpo_loss import reference_logprobs
    from megatron_llm.training.checkpoint.hooks import resume
    from megatron_llm.training.checkpoint.save_load import load_model_weights

    config = trainer.config
    resumed = trainer.state.step > 0
    reference_path = Path(args.ref or args.init)
    load_model_weights(trainer.model, reference_path)
    table: dict = {}
    for dataset in datasets:
        if dataset is not None:
            table.update(reference_logprobs(trainer.model, dataset, config.data.seq_length,
                                            config.schedule.micro_batch_size))
    if resumed:
        resume(trainer)
    else:
        if args.ref and args.init and Path(args.init) != reference_path:
            load_model_weights(trainer.model, Path(args.init))
        trainer.optimizer.reload_model_params()
    return table
