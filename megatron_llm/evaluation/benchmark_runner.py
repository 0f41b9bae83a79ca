"""Run one benchmark from local files on a NativeModel: read, prompt, score or generate, grade, summarise.

Shared by `megatron-llm evaluate --task` and evaluation during training; every rank of the model calls it
with the same arguments and gets the same result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from megatron_llm.errors import UsageError
from megatron_llm.evaluation import benchmarks, formats, generative
from megatron_llm.evaluation.generation import Request
from megatron_llm.evaluation.native import NativeModel

LOGLIK_TASKS = ("mmlu", "truthfulqa", "hellaswag", "arc")
GENERATIVE_TASKS = ("gsm8k", "humaneval")
TASKS = LOGLIK_TASKS + GENERATIVE_TASKS
DEFAULT_SHOTS = {"mmlu": 5, "gsm8k": 5}


@dataclass
class TaskOptions:
    split: str | None = None
    num_fewshot: int | None = None  # default: 5 for MMLU and GSM8K, 0 otherwise
    fewshot: str | None = None  # GSM8K: examples file in GSM8K's layout
    primer: str | None = None  # TruthfulQA: text put before every question
    limit: int | None = None  # first N records
    max_new_tokens: int = 256
    samples: int = 1  # HumanEval samples per problem
    temperature: float = 0.8  # HumanEval sampling temperature when samples > 1
    pass_k: list[int] = field(default_factory=lambda: [1, 10, 100])
    batch_size: int = 4
    details: bool = False
    allow_unsandboxed: bool = False
    hide: list[str] = field(default_factory=list)  # directories generated code must not see


def _limited(records: list, limit: int | None) -> list:
    return records[:limit] if limit else records


def _loglik(native: NativeModel, questions: list[benchmarks.Question]) -> list[list[float]]:
    pairs = [(q.context, c) for q in questions for c in q.continuations]
    scores = [lp for lp, _ in native.loglikelihood(pairs)]
    out, k = [], 0
    for q in questions:
        out.append(scores[k:k + len(q.continuations)])
        k += len(q.continuations)
    return out


def _shots(task: str, options: TaskOptions) -> int:
    return options.num_fewshot if options.num_fewshot is not None else DEFAULT_SHOTS.get(task, 0)


def _fewshot_pool(task: str, data: str | Path, split: str | None, pool_split: str) -> list[formats.Record]:
    """The split few-shot examples come from (lm-evaluation-harness's: MMLU's dev, ARC's train)."""
    if (split or formats.SPLIT_DEFAULTS[task]) == pool_split:
        raise UsageError(f"--split {pool_split}: {task}'s few-shot examples come from that split; evaluate another "
                         "split or give --num-fewshot 0")
    if Path(data).is_file():
        raise UsageError(f"--data {data}: one file has no {pool_split} split for {task}'s few-shot examples; give "
                         "the benchmark's directory or --num-fewshot 0")
    return formats.read_benchmark(task, data, pool_split)


def loglik_questions(task: str, data: str | Path, options: TaskOptions) -> list[benchmarks.Question]:
    """The prompts and scored answers of a log-likelihood benchmark (a task of LOGLIK_TASKS)."""
    records = _limited(formats.read_benchmark(task, data, options.split), options.limit)
    shots = _shots(task, options)
    if shots and task in ("hellaswag", "truthfulqa"):
        hint = "--primer FILE" if task == "truthfulqa" else "--harness-tasks hellaswag"
        raise UsageError(f"--num-fewshot {shots}: {task} is scored zero-shot here (for examples use {hint})")
    if task == "mmlu":
        dev = _fewshot_pool(task, data, options.split, "dev") if shots else []
        return benchmarks.mmlu_questions(records, dev, shots)
    if task == "arc":
        train = _fewshot_pool(task, data, options.split, "train") if shots else []
        return benchmarks.arc_questions(records, train, shots)
    if task == "hellaswag":
        return benchmarks.hellaswag_questions(records)
    primer = Path(options.primer).read_text(encoding="utf-8") if options.primer else ""
    return benchmarks.truthfulqa_questions(records, primer)


def run_task(native: NativeModel, task: str, data: str | Path, options: TaskOptions) -> dict:
    if task not in TASKS:
        raise UsageError(f"--task: unknown benchmark {task!r} (known: {', '.join(TASKS)})")
    if task == "gsm8k":
        records = _limited(formats.read_benchmark(task, data, options.split), options.limit)
        return _gsm8k(native, records, _shots(task, options), options)
    if task == "humaneval":
        return _humaneval(native, _limited(formats.read_benchmark(task, data, options.split), options.limit), options)
    questions = loglik_questions(task, data, options)
    result = benchmarks.summarize(task, questions, _loglik(native, questions), options.details)
    result["num_fewshot"] = _shots(task, options)
    return result


def _prompt_ids(native: NativeModel, text: str, budget: int) -> list[int]:
    ids = native.encode(text) or [native.eod]
    return ids[-(native.max_length - budget):]


def _gsm8k(native: NativeModel, records: list, shots: int, options: TaskOptions) -> dict:
    examples = []
    if shots:
        if not options.fewshot:
            raise UsageError("--task gsm8k: few-shot examples need --fewshot FILE (GSM8K layout), or --num-fewshot 0")
        examples = formats.read_benchmark("gsm8k", options.fewshot)[:shots]
    requests = [Request(_prompt_ids(native, generative.gsm8k_prompt(r.fields["question"], examples),
                                    options.max_new_tokens), options.max_new_tokens, generative.GSM8K_STOPS)
                for r in records]
    completions = [g.text for g in native.generate(requests, options.batch_size)]
    result = generative.grade_gsm8k(records, completions, options.details)
    result["num_fewshot"] = len(examples)
    return result


def _humaneval(native: NativeModel, records: list, options: TaskOptions) -> dict:
    from megatron_llm.evaluation.sandbox import Sandbox

    sandbox = Sandbox(hide=options.hide, allow_unsandboxed=options.allow_unsandboxed)
    temperature = options.temperature if options.samples > 1 else 0.0
    requests = [Request(_prompt_ids(native, r.fields["prompt"], options.max_new_tokens), options.max_new_tokens,
                        generative.HUMANEVAL_STOPS, temperature, seed=1000 * i + s)
                for i, r in enumerate(records) for s in range(options.samples)]
    texts = [g.text for g in native.generate(requests, options.batch_size)]
    samples = [texts[i * options.samples:(i + 1) * options.samples] for i in range(len(records))]
    import torch.distributed as dist

    result = None
    if not dist.is_initialized() or dist.get_rank() == 0:  # run the code once, on one rank
        result = generative.grade_humaneval(records, samples, sandbox, options.pass_k, options.details)
    if dist.is_initialized() and dist.get_world_size() > 1:
        box = [result]
        dist.broadcast_object_list(box, src=0)
        result = box[0]
    return result
