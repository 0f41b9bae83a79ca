"""`megatron-llm train`: validate the config, then pre-train (launched directly or under torchrun/srun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatron_llm.config.loader import load_config
from megatron_llm.config.validation import validate
from megatron_llm.errors import UsageError
from megatron_llm.runtime.distributed import process_info
from megatron_llm.runtime.platform import detect_platform


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm train", description=__doc__)
    parser.add_argument("--config", help="YAML config (defaults: the built-in tiny model)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set parallel.tensor=2 (repeatable)")
    parser.add_argument("--run-dir", default="runs/default", help="where config, metrics, TensorBoard and "
                        "checkpoints go (default: runs/default); an existing run resumes from its latest checkpoint")
    parser.add_argument("--resume-from", type=Path, metavar="PATH",
                        help="a checkpoint root or iter_* directory to start from (any parallel layout)")
    parser.add_argument("--finetune", action="store_true",
                        help="with --resume-from: load the weights only; step, optimizer and data restart")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.finetune and args.resume_from is None:
        raise UsageError("--finetune needs --resume-from PATH (the checkpoint whose weights to start from)")
    config = load_config(args.config, args.overrides)
    world_size = process_info().world_size
    validate(config, world_size, detect_platform())

    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.faults import BAD_STEPS_EXIT_CODE, TrainingAborted
    from megatron_llm.training.loop import setup, train

    try:
        trainer = setup(config, Path(args.run_dir), args.resume_from, args.finetune)
        state = train(trainer)
    except TrainingAborted as exc:
        print(f"megatron-llm train: {exc}", file=sys.stderr, flush=True)
        return BAD_STEPS_EXIT_CODE
    finally:
        destroy_distributed()
    return state.exit_code
