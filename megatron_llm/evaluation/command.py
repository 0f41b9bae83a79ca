"""`megatron-llm evaluate`: perplexity on held-out indexed shards and log-likelihood multiple choice.

`--data` takes the inputs of every task: `*.jsonl` files are multiple-choice task files, anything else an
indexed shard prefix for perplexity. Runs in one process, or under torchrun in any TP/PP/DP layout
(`--set parallel.tensor=2`); prints a table, or JSON with `--json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from megatron_llm.errors import UsageError

TASKS = ("perplexity", "multiple-choice")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm evaluate", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="checkpoint root or iter_* directory")
    parser.add_argument("--tasks", default="perplexity,multiple-choice",
                        help=f"comma-separated, from {', '.join(TASKS)} (default: both)")
    parser.add_argument("--data", nargs="+", required=True, metavar="PATH",
                        help="multiple-choice task files (*.jsonl) and indexed shard prefixes (perplexity)")
    parser.add_argument("--tokenizer", help="tokenizer directory (default: the checkpoint's)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the checkpoint's config, e.g. parallel.tensor=2 or data.seq_length=128")
    parser.add_argument("--micro-batch-size", type=int, default=4, help="sequences per forward pass")
    parser.add_argument("--max-tokens", type=int, default=1_000_000, help="perplexity: tokens read per shard")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    parser.add_argument("--details", action="store_true", help="JSON: add every question's choice log-probs")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad task record")
    return parser


def split_inputs(paths: list[str], tasks: list[str]) -> tuple[list[str], list[str]]:
    """(task files, shard prefixes) for the selected tasks."""
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise UsageError(f"--tasks: unknown task {unknown[0]!r} (expected {', '.join(TASKS)})")
    mc = [p for p in paths if p.endswith(".jsonl")]
    shards = [p for p in paths if not p.endswith(".jsonl")]
    if "multiple-choice" in tasks and not mc and "perplexity" not in tasks:
        raise UsageError("--data: multiple-choice needs task files (*.jsonl)")
    if "perplexity" in tasks and not shards and "multiple-choice" not in tasks:
        raise UsageError("--data: perplexity needs indexed shard prefixes (PREFIX for PREFIX.bin/.idx)")
    return (mc if "multiple-choice" in tasks else []), (shards if "perplexity" in tasks else [])


def format_table(results: list[dict]) -> str:
    rows = [("task", "kind", "metric", "value", "n")]
    for r in results:
        if r["kind"] == "perplexity":
            rows.append((r["task"], "perplexity", "perplexity", f"{r['perplexity']:.4f}", f"{r['tokens']} tokens"))
            rows.append(("", "", "nll", f"{r['nll']:.4f}", ""))
        else:
            rows.append((r["task"], "multiple-choice", "acc", f"{r['acc']:.4f}", f"{r['questions']} questions"))
            rows.append(("", "", "acc_norm", f"{r['acc_norm']:.4f}", ""))
            rows.append(("", "", "chance", f"{r['chance']:.4f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def evaluate(args: argparse.Namespace) -> dict:
    import torch

    from megatron_llm.evaluation import multiple_choice, perplexity
    from megatron_llm.evaluation.loading import load_for_inference
    from megatron_llm.evaluation.scoring import pad_sequence, score_samples

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    task_files, shards = split_inputs(args.data, tasks)
    for path in task_files:
        if not Path(path).is_file():
            raise UsageError(f"{path}: task file not found")
    loaded = load_for_inference(args.checkpoint, args.overrides, args.tokenizer, args.micro_batch_size)
    config, tok = loaded.config, loaded.tokenizer
    seq = config.data.seq_length
    pad = tok.pad_id if tok.pad_id is not None else tok.eod_id
    rank0 = torch.distributed.get_rank() == 0

    def score(sequences: list) -> object:
        samples = [pad_sequence(ids, mask, seq, pad) for ids, mask in sequences]
        return score_samples(loaded.model, samples, seq, args.micro_batch_size)

    results = []
    for prefix in shards:
        scored = score(perplexity.windows(perplexity.read_stream(prefix, args.max_tokens), seq))
        results.append(perplexity.summarize(prefix, float(scored.logprob.sum()), float(scored.num_tokens.sum())))
    for path in task_files:
        questions, report = multiple_choice.load_task(path, args.strict)
        if rank0 and report.rejected:
            report.print()
        scored = score(multiple_choice.choice_sequences(questions, tok))
        result = multiple_choice.summarize(questions, scored.logprob.tolist(), Path(path).stem, args.details)
        result["rejected"] = report.rejected
        results.append(result)
    return {"checkpoint": loaded.metadata["path"], "step": loaded.metadata.get("step"),
            "seq_length": seq, "results": results}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.micro_batch_size < 1:
        raise UsageError(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    from megatron_llm.runtime.distributed import destroy_distributed, process_info

    try:
        output = evaluate(args)
    finally:
        destroy_distributed()
    if process_info().rank == 0:
        if args.json:
            json.dump(output, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(f"checkpoint {output['checkpoint']} (step {output['step']})")
            print(format_table(output["results"]))
        sys.stdout.flush()
    return 0
