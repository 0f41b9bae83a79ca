"""`megatron-llm evaluate`: perplexity, multiple choice, standard benchmarks and lm-evaluation-harness tasks.

Three ways to name the work (they combine):
- `--tasks perplexity,multiple-choice --data ...`: `*.jsonl` files are multiple-choice task files, anything
  else an indexed shard prefix for perplexity.
- `--task mmlu --data DIR` (repeatable, one `--data` per `--task`, in order): MMLU, TruthfulQA, HellaSwag,
  ARC, GSM8K and HumanEval from local files in their published layouts (see evaluation/formats.py).
- `--harness-tasks arc_easy,...`: lm-evaluation-harness's own task definitions (`--harness-include DIR` for
  local task YAMLs) on this checkpoint, through the `megatron-llm` harness model.
Runs in one process, or under torchrun in any TP/PP/DP layout (`--set parallel.tensor=2`); prints a table,
or JSON with `--json`; `--compare OTHER.json` adds another model's scores beside ours.
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
    parser.add_argument("--tasks", default=None,
                        help=f"comma-separated, from {', '.join(TASKS)} (default: both, when --data is given "
                        "without --task)")
    parser.add_argument("--data", nargs="+", default=[], metavar="PATH",
                        help="multiple-choice task files (*.jsonl) and indexed shard prefixes (perplexity); with "
                        "--task, one benchmark file or directory per --task")
    parser.add_argument("--task", action="append", default=[], metavar="NAME",
                        help="a benchmark from local files: mmlu, truthfulqa, hellaswag, arc, gsm8k, humaneval")
    parser.add_argument("--split", help="benchmark split to read (default: test; validation for TruthfulQA and "
                        "HellaSwag)")
    parser.add_argument("--num-fewshot", type=int, help="examples before each question (default 5 for MMLU and "
                        "GSM8K, 0 otherwise)")
    parser.add_argument("--fewshot", help="GSM8K: few-shot examples file in GSM8K's layout")
    parser.add_argument("--primer", help="TruthfulQA: a text file put before every question")
    parser.add_argument("--limit", type=int, help="evaluate only the first N records of each benchmark")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="GSM8K, HumanEval: generation budget")
    parser.add_argument("--samples", type=int, default=1, help="HumanEval: samples per problem (pass@k needs k)")
    parser.add_argument("--temperature", type=float, default=0.8, help="HumanEval: temperature when --samples > 1")
    parser.add_argument("--pass-k", default="1,10,100", help="HumanEval: k values of pass@k (default 1,10,100)")
    parser.add_argument("--allow-unsandboxed", action="store_true",
                        help="HumanEval: run generated code even where no sandbox (unshare) is available (unsafe)")
    parser.add_argument("--harness-tasks", help="comma-separated lm-evaluation-harness task names")
    parser.add_argument("--harness-include", help="a directory of extra lm-evaluation-harness task YAMLs")
    parser.add_argument("--harness-fewshot", type=int, help="lm-evaluation-harness num_fewshot")
    parser.add_argument("--compare", metavar="OTHER.json", help="print another model's results beside ours "
                        "(evaluate --json output, or an lm_eval results file)")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON results to FILE")
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
        elif "metrics" in r:
            first = True
            for name, value in r["metrics"].items():
                rows.append((r["task"] if first else "", r["kind"] if first else "", name, f"{value:.4f}",
                             f"{r['n']} items" if first and "n" in r else ""))
                first = False
            chance = r.get("chance")
            for name, value in (chance.items() if isinstance(chance, dict) else [("", chance)]):
                if isinstance(value, (int, float)):
                    rows.append(("", "", f"chance {name}".strip(), f"{value:.4f}", ""))
            for group, values in (r.get("groups") or {}).items():
                shown = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k not in ("n", "chance"))
                rows.append(("", "", f"  {group}", shown, f"{values['n']} items"))
        else:
            rows.append((r["task"], "multiple-choice", "acc", f"{r['acc']:.4f}", f"{r['questions']} questions"))
            rows.append(("", "", "acc_norm", f"{r['acc_norm']:.4f}", ""))
            rows.append(("", "", "chance", f"{r['chance']:.4f}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _classic_inputs(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(multiple-choice files, shard prefixes) of the `--tasks` mode."""
    if args.task:
        if len(args.data) != len(args.task):
            raise UsageError(f"--data: give one path per --task ({len(args.task)} tasks, {len(args.data)} paths)")
        if args.tasks is None:
            return [], []
        raise UsageError("--tasks and --task: use one (the --data paths belong to --task)")
    if not args.data:
        if args.tasks is not None or not args.harness_tasks:
            raise UsageError("--data: required (or evaluate --harness-tasks only)")
        return [], []
    tasks = [t.strip() for t in (args.tasks or "perplexity,multiple-choice").split(",") if t.strip()]
    return split_inputs(args.data, tasks)


def _options(args: argparse.Namespace, hide: list[str]):
    from megatron_llm.evaluation.benchmark_runner import TaskOptions

    try:
        ks = [int(k) for k in args.pass_k.split(",") if k.strip()]
    except ValueError as error:
        raise UsageError(f"--pass-k {args.pass_k!r}: expected comma-separated integers") from error
    return TaskOptions(split=args.split, num_fewshot=args.num_fewshot, fewshot=args.fewshot, primer=args.primer,
                       limit=args.limit, max_new_tokens=args.max_new_tokens, samples=args.samples,
                       temperature=args.temperature, pass_k=ks, batch_size=args.micro_batch_size,
                       details=args.details, allow_unsandboxed=args.allow_unsandboxed, hide=hide)


def harness_results(native, tasks: str, include: str | None, fewshot: int | None, limit: int | None,
                    batch_size: int) -> list[dict]:
    """lm-evaluation-harness tasks on our model, as result records (task, metrics)."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from megatron_llm.evaluation.harness import MegatronLM

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    manager = TaskManager(include_path=include) if include else TaskManager()
    output = simple_evaluate(model=MegatronLM(native=native, batch_size=batch_size), tasks=names,
                             num_fewshot=fewshot, limit=limit, task_manager=manager, log_samples=False)
    records = []
    for task, metrics in sorted(output["results"].items()):
        values = {}
        for key, value in metrics.items():
            name, _, flt = key.partition(",")
            if isinstance(value, (int, float)) and "stderr" not in name and name not in ("alias",):
                values[name if flt in ("", "none") else f"{name} ({flt})"] = float(value)
        records.append({"task": task, "kind": "harness", "metrics": values})
    return records


def evaluate(args: argparse.Namespace) -> dict:
    import torch

    from megatron_llm.evaluation import multiple_choice, perplexity
    from megatron_llm.evaluation.benchmark_runner import TASKS as BENCHMARKS
    from megatron_llm.evaluation.benchmark_runner import run_task
    from megatron_llm.evaluation.loading import load_for_inference
    from megatron_llm.evaluation.native import NativeModel
    from megatron_llm.evaluation.scoring import pad_sequence, score_samples

    task_files, shards = _classic_inputs(args)
    for name in args.task:
        if name not in BENCHMARKS:
            raise UsageError(f"--task: unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
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
    native = NativeModel.from_loaded(loaded, args.micro_batch_size)
    checkpoints = Path(loaded.metadata["path"]).resolve().parent
    hide = [str(checkpoints)] + ([str(checkpoints.parent)] if (checkpoints.parent / "config.yaml").is_file() else [])
    options = _options(args, hide)
    for name, data in zip(args.task, args.data):
        results.append(run_task(native, name, data, options))
    if args.harness_tasks:
        results += harness_results(native, args.harness_tasks, args.harness_include, args.harness_fewshot,
                                   args.limit, args.micro_batch_size)
    return {"checkpoint": loaded.metadata["path"], "step": loaded.metadata.get("step"),
            "seq_length": seq, "results": results}


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.micro_batch_size < 1:
        raise UsageError(f"--micro-batch-size must be >= 1, got {args.micro_batch_size}")
    if args.samples < 1:
        raise UsageError(f"--samples must be >= 1, got {args.samples}")
    other = None
    if args.compare:
        from megatron_llm.evaluation.compare import load_other

        other = load_other(args.compare)
    from megatron_llm.runtime.distributed import destroy_distributed, process_info

    try:
        output = evaluate(args)
    finally:
        destroy_distributed()
    if process_info().rank == 0:
        if args.output:
            Path(args.output).write_text(json.dumps(output, indent=1) + "\n", encoding="utf-8")
        if args.json:
            json.dump(output, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            print(f"checkpoint {output['checkpoint']} (step {output['step']})")
            print(format_table(output["results"]))
        if other is not None and not args.json:
            from megatron_llm.evaluation.compare import comparison_table, flatten

            print(f"\ncomparison with {args.compare}")
            print(comparison_table(flatten(output), other, "ours", Path(args.compare).stem))
        sys.stdout.flush()
    return 0
