"""What `sft` and `dpo` share: arguments, the config taken from the initial checkpoint, the tokenizer and
its chat template, the data preparation, and running their Task on the Trainer."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from megatron_llm.config.loader import config_from_dict, load_config, save_config
from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError
from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate
from megatron_llm.posttrain.records import DataReport


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (schedule, optim, parallel, data.seq_length, ...)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set parallel.tensor=2 (repeatable)")
    parser.add_argument("--init", help="checkpoint root or iter_* directory to start from; its model section "
                        "and tokenizer are used")
    parser.add_argument("--data", required=True, help="training JSONL file")
    parser.add_argument("--valid-data", help="validation JSONL file (default: hold out --valid-fraction)")
    parser.add_argument("--valid-fraction", type=float, default=0.05,
                        help="fraction of --data held out for validation when --valid-data is not given")
    parser.add_argument("--epochs", type=float, default=1.0,
                        help="passes over the data when schedule.train_iters is not set (default 1)")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad record instead of "
                        "reporting and skipping it")
    parser.add_argument("--run-dir", default="runs/posttrain", help="config, metrics, TensorBoard, checkpoints")


def init_metadata(init: str | None) -> dict | None:
    if init is None:
        return None
    from megatron_llm.training.checkpoint.format import read_metadata, resolve_checkpoint

    return read_metadata(resolve_checkpoint(Path(init)))


def resolve_config(args: argparse.Namespace) -> Config:
    """The user's config with the model architecture (and, unless given, the tokenizer) of `--init`."""
    config = load_config(args.config, args.overrides)
    metadata = init_metadata(args.init)
    if metadata is not None:
        base = config_from_dict(metadata["config"])
        config.model = base.model
        if not config.data.tokenizer:
            saved = (metadata.get("tokenizer") or {}).get("path") or base.data.tokenizer
            config.data.tokenizer = saved
    if not config.data.tokenizer:
        raise UsageError("data.tokenizer: post-training needs a tokenizer (set data.tokenizer or --init a "
                         "checkpoint that names one)")
    return config


def chat_template(tokenizer: object) -> tuple[ChatTemplate, bool]:
    """The tokenizer's chat template, or the default one; True when the default was used."""
    source = getattr(tokenizer, "chat_template", None)
    try:
        return ChatTemplate(source or DEFAULT_CHAT_TEMPLATE), not source
    except ValueError as error:
        raise UsageError(f"{getattr(tokenizer, 'path', 'tokenizer')}: chat_template: {error}") from None


def store_default_template(config: Config, run_dir: Path, write: bool) -> None:
    """Point the config at a copy of the tokenizer in the run directory whose manifest holds the default chat
    template, so checkpoints and `convert to-hf` carry the template the model was tuned with. Every rank
    calls it; the rank with `write` makes the copy (the others must wait for it before reading it)."""
    from megatron_llm.data.tokenizers.tokenizer import MANIFEST

    source = Path(config.data.tokenizer)
    target = (run_dir / "tokenizer").resolve()
    if write and target != source.resolve():
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target)
        manifest = json.loads((target / MANIFEST).read_text())
        manifest["chat_template"] = DEFAULT_CHAT_TEMPLATE
        (target / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    config.data.tokenizer = str(target)
    if write:
        save_config(config, run_dir / "config.yaml")


def split_validation(items: list, fraction: float) -> tuple[list, list]:
    """The last `fraction` of `items` (at least one when fraction > 0 and there are two or more)."""
    if fraction <= 0 or len(items) < 2:
        return items, []
    count = min(max(1, round(len(items) * fraction)), len(items) - 1)
    return items[:-count], items[-count:]


def load_splits(args: argparse.Namespace, config: Config, tokenizer: object, template: ChatTemplate,
                load: Callable) -> tuple[list, list, list[DataReport], int]:
    """(train items, validation items, data reports, pad id): `load(path, template, tokenizer, seq_length,
    strict)` -> (items, report) reads --data and --valid-data; without --valid-data a --valid-fraction of
    the shuffled training items is held out."""
    from megatron_llm.posttrain.packing import shuffled

    seq, seed = config.data.seq_length, config.schedule.seed
    train, report = load(args.data, template, tokenizer, seq, args.strict)
    reports = [report]
    if args.valid_data:
        valid, valid_report = load(args.valid_data, template, tokenizer, seq, args.strict)
        reports.append(valid_report)
        train = shuffled(train, seed)
    else:
        train, valid = split_validation(shuffled(train, seed), args.valid_fraction)
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.eod_id
    return train, valid, reports, pad


def set_train_iters(config: Config, num_samples: int, epochs: float) -> None:
    if config.schedule.train_iters is None and config.schedule.train_tokens is None:
        gbs = config.schedule.global_batch_size
        config.schedule.train_iters = max(1, int(-(-num_samples * epochs // gbs)))


def report_data(reports: list[DataReport], run_dir: Path, is_rank0: bool) -> None:
    """Print each bad record as file:line and the counts; write them all to RUN_DIR/data_report.json."""
    if not is_rank0:
        return
    for report in reports:
        report.print()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "data_report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=1) + "\n")


class PreparedData(NamedTuple):
    train: object
    valid: object | None
    reports: list[DataReport]
    default_template: bool


def prepare_data(
    args: argparse.Namespace,
    config: Config,
    build_datasets: Callable,
    what: str,
    check_platform: Callable | None = None,
) -> PreparedData:
    """Check the layout (and `check_platform(config, platform)`, if given), load the tokenizer and its chat
    template, build the datasets with `build_datasets(args, config, tokenizer, template)` -> (train, valid or
    None, reports), size the schedule to them (`--epochs`) and turn evaluation off without validation data.
    No usable `what` in the data is an error naming the file, after the data report is written."""
    from megatron_llm.config.validation import validate
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
    from megatron_llm.runtime.distributed import process_info
    from megatron_llm.runtime.hardware import detect_platform

    platform = detect_platform()
    world_size = process_info().world_size
    validate(_sized_placeholder(config), world_size, platform, reads_data_paths=False)
    if check_platform is not None:
        check_platform(config, platform)
    tokenizer = load_tokenizer(config.data.tokenizer)
    template, default_template = chat_template(tokenizer)
    train_set, valid_set, reports = build_datasets(args, config, tokenizer, template)
    if len(train_set) == 0:
        report_data(reports, Path(args.run_dir), process_info().rank == 0)
        raise UsageError(f"{args.data}: no usable {what}")
    set_train_iters(config, len(train_set), args.epochs)
    if valid_set is None:
        config.schedule.eval_interval = None
        config.schedule.eval_iters = 0
    validate(config, world_size, platform, reads_data_paths=False)
    return PreparedData(train_set, valid_set, reports, default_template)


def _sized_placeholder(config: Config) -> Config:
    """The config as validation sees it before the data has sized the run (`--epochs`): just long enough
    for the warmup; the sized config is validated again."""
    if config.schedule.train_iters is not None or config.schedule.train_tokens is not None:
        return config
    steps = config.optim.warmup_iters + 1
    return dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, train_iters=steps))


def run_task(config: Config, run_dir: Path, task: object, init: str | None) -> int:
    """Train `task`: resumed from the run's own latest checkpoint, else from `init`'s weights. Returns the
    exit code."""
    from megatron_llm.runtime.distributed import destroy_distributed
    from megatron_llm.training.exit_codes import BAD_STEPS_EXIT_CODE, TrainingAborted
    from megatron_llm.training.setup import build_trainer

    try:
        trainer = build_trainer(config, run_dir, task, resume_from=Path(init) if init else None, finetune=True)
        return trainer.fit().exit_code
    except TrainingAborted as exc:
        print(f"megatron-llm {task.name}: {exc}", file=sys.stderr, flush=True)
        return BAD_STEPS_EXIT_CODE
    finally:
        destroy_distributed()
