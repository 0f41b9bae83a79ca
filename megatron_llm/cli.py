"""The `megatron-llm` command: a thin dispatcher.

Each sub-command lives in its own module exposing `main(argv: list[str]) -> int`. Modules are imported
only when their command runs, so light commands (preprocess-data, curate, plan) never pay for torch or
megatron-core imports.
"""

from __future__ import annotations

import importlib
import sys

from megatron_llm.errors import USAGE_EXIT_CODE, UsageError

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("megatron_llm.training.command", "pre-train a model from a YAML config"),
    "plan": ("megatron_llm.planning.command", "parameters, FLOPs, memory per GPU, layouts, time and cost"),
    "curate": ("megatron_llm.data.curate.command", "clean, deduplicate and filter raw JSONL"),
    "curate-report": ("megatron_llm.data.curate.report_command", "what curate kept and removed, by stage"),
    "train-tokenizer": ("megatron_llm.data.tokenizers.command", "train a SentencePiece or byte-level BPE tokenizer"),
    "preprocess-data": ("megatron_llm.data.shards.preprocess_command", "tokenize JSONL into Megatron indexed shards"),
    "merge-shards": ("megatron_llm.data.shards.merge_command", "merge indexed shards into one dataset"),
    "inspect-data": ("megatron_llm.data.shards.inspect_command", "summarise and decode an indexed dataset"),
    "checkpoint": ("megatron_llm.training.checkpoint.command", "list and verify checkpoints"),
    "convert": ("megatron_llm.convert.command", "convert checkpoints to and from Hugging Face"),
    "slurm": ("megatron_llm.launch.slurm_command", "submit and inspect SLURM jobs"),
    "launch": ("megatron_llm.launch.local_command", "run a command under torchrun on this machine"),
    "sft": ("megatron_llm.posttrain.sft_command", "supervised fine-tuning on chat data"),
    "dpo": ("megatron_llm.posttrain.dpo_command", "direct preference optimisation"),
    "evaluate": ("megatron_llm.evaluation.command", "perplexity and multiple-choice evaluation"),
    "generate": ("megatron_llm.evaluation.generate_command", "generate text from a checkpoint"),
    "lm-eval": ("megatron_llm.evaluation.lm_eval_command", "lm-evaluation-harness with the megatron-llm model"),
    "doctor": ("megatron_llm.runtime.doctor_command", "what is installed, what the GPU supports, what a config uses"),
    "runs": ("megatron_llm.runs.command", "summarise a run directory and plot its curves (runs show)"),
    "config": ("megatron_llm.config.command",
               "show every configuration field with its value, default and documentation"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: megatron-llm <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `megatron-llm <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else USAGE_EXIT_CODE
    if argv[0] == "--version":
        from megatron_llm import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"megatron-llm: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return USAGE_EXIT_CODE
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except UsageError as error:
        print(f"megatron-llm {name}: error: {error}", file=sys.stderr)
        return USAGE_EXIT_CODE
