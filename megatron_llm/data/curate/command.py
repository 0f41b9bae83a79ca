"""`megatron-llm curate`: clean, deduplicate and filter raw JSONL/Parquet into JSONL for preprocess-data."""

from __future__ import annotations

import argparse
import os

from megatron_llm.data.curate.config import load_config
from megatron_llm.data.curate.pipeline.context import RunContext
from megatron_llm.data.curate.pipeline.layout import Layout
from megatron_llm.data.curate.pipeline.plan import establish_plan, make_plan, steps_of
from megatron_llm.data.curate.pipeline.runner import Shard, Workers, log, run_all, run_one_step
from megatron_llm.data.readers import expand_inputs
from megatron_llm.errors import UsageError
from megatron_llm.runtime.disk import output_error
from megatron_llm.runtime.run_lock import RunLock

EPILOG = """\
steps: the stage list is cut at each dedup stage into map steps (one unit per input file), bucket
steps (one unit per band), verify steps (per input file) and cluster steps (one process), then
`finish`; `--list-steps` prints them. Without --step, everything runs here in order and a rerun
skips completed units. With --shard I/N (e.g. a SLURM array task) a process does its share of each
step (single-process steps on shard 0) and stops where it has to wait for other shards: run the same
command again, or drive the steps one by one with --step NAME [--shard I/N].
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm curate",
        description="Deduplicate (exact and MinHash), filter (quality, language, word lists), redact PII and "
        "normalise raw JSONL (.jsonl, .jsonl.gz, .jsonl.zst), Parquet or text files into clean JSONL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", action="append", nargs="+", metavar="PATTERN", help="files, globs or directories")
    parser.add_argument("--output", metavar="DIR", help="output directory (kept JSONL, rejects/, stats/)")
    parser.add_argument("--config", required=True, metavar="YAML", help="stage list, e.g. examples/curate/web.yaml")
    parser.add_argument("--workers", type=int, default=1, metavar="N", help="local worker processes (default 1)")
    parser.add_argument("--shard", metavar="I/N", help="do only shard I of N of each step's units")
    parser.add_argument("--step", metavar="NAME", help="run only this step (see --list-steps)")
    parser.add_argument("--list-steps", action="store_true", help="print the steps of this config and exit")
    parser.add_argument(
        "--on-error",
        choices=("skip", "fail"),
        default="skip",
        help="malformed input lines: skip (count, report, write to rejects/) or fail (exit 2 at the first one)",
    )
    parser.add_argument("--keep-work", action="store_true", help="keep intermediate files under OUTPUT/_work")
    return parser


def _list_steps(config, n_parts: int | None) -> None:
    layout = Layout(".", n_parts or 1)
    for step in steps_of(config):
        units = step.units(layout)
        if step.kind in ("map", "verify"):
            count = f"{n_parts} files" if n_parts is not None else "one per input file"
        else:
            count = f"{len(units)} band task(s)" if step.parallel else "one process"
        print(f"{step.name}\t{'parallel' if step.parallel else 'single'}\t{count}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    config = load_config(args.config)
    patterns = [p for group in args.input or [] for p in group]
    if args.list_steps:
        _list_steps(config, len(expand_inputs(patterns)) if patterns else None)
        return 0
    if not patterns:
        raise UsageError("--input: give at least one file, glob or directory")
    if not args.output:
        raise UsageError("--output: required")
    if args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    shard = Shard.parse(args.shard) if args.shard else None
    inputs = expand_inputs(patterns)
    try:
        with _output_lock(args.output, shard, args.step):
            return _run(args, config, inputs, shard)
    except OSError as error:
        problem = output_error(error, f"the curated output under {args.output} (completed units are kept: free "
                                      "space and run the same command again to resume)", args.output)
        if problem is None or (error.filename and not str(error.filename).startswith(str(args.output))):
            raise
        raise problem from error


def _output_lock(output: str, shard: Shard | None, step: str | None) -> RunLock:
    """One run per output directory; with --shard I/N (SLURM array tasks share the directory) or --step,
    one process per (step, shard)."""
    if shard is None and step is None:
        return RunLock(os.path.join(output, ".curate.lock"), "curate run")
    name = f".curate.{step or 'all'}.{shard.index}-of-{shard.count}.lock" if shard else f".curate.{step}.lock"
    return RunLock(os.path.join(output, name), f"curate run ({step or 'all steps'}, shard {shard or 'all'})")


def _run(args: argparse.Namespace, config, inputs: list, shard: Shard | None) -> int:
    layout = Layout(args.output, len(inputs))
    plan = make_plan(config, inputs)
    steps = steps_of(config)
    if args.step is not None and args.step not in {s.name for s in steps}:
        raise UsageError(f"--step: unknown step {args.step!r} (steps: {', '.join(s.name for s in steps)})")
    if establish_plan(layout, plan) == "complete":
        log(f"{args.output} already holds this finished run; nothing to do")
        return 0
    ctx = RunContext(config, inputs, layout, steps, plan, on_error=args.on_error, keep_work=args.keep_work)
    with Workers(args.workers) as workers:
        if args.step is not None:
            run_one_step(ctx, ctx.step(args.step), shard, workers)
            return 0
        finished = run_all(ctx, shard, workers)
    if finished:
        kept = os.path.join(args.output, "part-*.jsonl")
        log(f"done: kept documents in {kept}; see `megatron-llm curate-report {args.output}`")
    return 0
