"""`megatron-llm train`: validate the config, then pre-train (launched directly or under torchrun/srun)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from megatron_llm.config.loader import load_config
from megatron_llm.config.validation import validate
from megatron_llm.errors import USAGE_EXIT_CODE, UsageError
from megatron_llm.runtime.distributed import process_info
from megatron_llm.runtime.hardware import detect_platform

REPORT_GRACE_SECONDS = 30.0  # how long ranks other than 0 wait for the launcher after a config error


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm train", description=__doc__)
    parser.add_argument("--config", help="YAML config (defaults: the built-in tiny model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set parallel.tensor=2 (repeatable)")
    parser.add_argument("--run-dir", default="runs/default", help="where config, metrics, TensorBoard and "
                        "checkpoints go (default: runs/default); an existing run resumes from its latest checkpoint")
    parser.add_argument("--stage", metavar="FILE", help="with --from: a YAML stage (name, steps, paths, "
                        "lr_schedule, lr, min_lr, warmup_iters) to train from that checkpoint on, e.g. an anneal")
    parser.add_argument("--resume-from", "--from", dest="resume_from", metavar="PATH",
                        help="a checkpoint root or iter_* directory to start from (any parallel layout); "
                        "s3://bucket/prefix or gs://... is downloaded first")
    parser.add_argument("--finetune", action="store_true",
                        help="with --resume-from: load the weights only; step, optimizer and data restart")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.finetune and args.resume_from is None:
        raise UsageError("--finetune needs --resume-from PATH (the checkpoint whose weights to start from)")
    try:
        config = load_config(args.config, args.overrides)
        if args.stage:
            from megatron_llm.training.staged_run import add_stage_from_checkpoint

            config = add_stage_from_checkpoint(config, args, Path(args.stage))
        validate(config, process_info().world_size, detect_platform())
    except UsageError as error:
        if process_info().rank != 0:
            # Under torchrun/srun every rank finds the same error and rank 0 prints it. A rank that exited first
            # would have the launcher stop rank 0 before it prints: wait to be stopped (bounded) instead.
            time.sleep(REPORT_GRACE_SECONDS)
            return USAGE_EXIT_CODE
        if "TORCHELASTIC_RUN_ID" in os.environ:
            raise UsageError(f"{error}\n(every rank exits 2, which torchrun reports as 1; `megatron-llm launch` "
                             "checks the config before starting torchrun and exits 2 itself)") from None
        raise

    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.exit_codes import BAD_STEPS_EXIT_CODE, TrainingAborted, exit_peer_lost, is_peer_lost
    from megatron_llm.training.setup import build_trainer

    try:
        trainer = build_trainer(config, Path(args.run_dir), resume_from=args.resume_from, finetune=args.finetune)
        state = trainer.fit()
    except TrainingAborted as exc:
        print(f"megatron-llm train: {exc}", file=sys.stderr, flush=True)
        return BAD_STEPS_EXIT_CODE
    except RuntimeError as exc:
        if is_peer_lost(exc):
            exit_peer_lost(exc, "train")
        raise
    finally:
        destroy_distributed()
    return state.exit_code
