"""Prompts and scores of the log-likelihood benchmarks (MMLU, TruthfulQA MC1/MC2, HellaSwag, ARC).

Prompts follow the published evaluation setups as lm-evaluation-harness runs them:
- MMLU: `The following are multiple choice questions (with answers) about <subject>.\n\n` then k examples of
  the subject's dev split (the first k, in file order) and the question, each
  `question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:`, answers ` A`..` D`; `acc`.
- ARC: `Question: <question>\nAnswer:`, the choice texts as answers; `acc` and `acc_norm`. k-shot examples
  come from the set's train split, drawn as the harness's default sampler draws them (`sampled_shots`).
- HellaSwag: `<activity>: <ctx_a> <Ctx_b>` with WikiHow's bracket artefacts removed, endings as answers;
  `acc` and `acc_norm`.
- TruthfulQA: `Q: <question>\nA:` (zero-shot, or after a primer read from `--primer FILE`); MC1 `acc` is
  whether the single true answer scores highest, MC2 the normalised probability mass of the true answers.
A few-shot example is its question, a space, its answer and a blank line (the harness's `target_delimiter`
" " and `fewshot_delimiter` "\n\n"); the question asked ends without a delimiter and every answer scored
starts with the space.
`acc_norm` divides each answer's log-likelihood by its length in characters. Each report has per-group means
(MMLU subjects, ARC sets), their macro average, the mean over all questions, and the chance level.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

from megatron_llm.errors import UsageError
from megatron_llm.evaluation.formats import LETTERS, Record

HARNESS_FEWSHOT_SEED = 1234  # lm-evaluation-harness's default --fewshot_random_seed


@dataclass
class Question:
    source: str
    group: str
    context: str
    continuations: list[str]  # what is scored after the context (with its leading delimiter)
    lengths: list[int]  # characters of each answer, for acc_norm
    gold: list[int]  # indices of true answers (one, except TruthfulQA MC2)
    kind: str  # "choice" (acc, acc_norm), "mmlu" (acc), "mc1" or "mc2"


def _mmlu_block(fields: dict) -> str:
    lines = [fields["question"].strip()] + [f"{LETTERS[i]}. {c}" for i, c in enumerate(fields["choices"])]
    return "\n".join(lines) + "\nAnswer:"


def _by_group(records: list[Record]) -> dict[str, list[Record]]:
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(record.group, []).append(record)
    return groups


def _pool(groups: dict[str, list[Record]], group: str, shots: int, what: str) -> list[Record]:
    pool = groups.get(group, [])
    if len(pool) < shots:
        raise UsageError(f"{what} {group}: {shots}-shot needs {shots} few-shot examples, found {len(pool)}")
    return pool


def mmlu_questions(records: list[Record], dev: list[Record], shots: int) -> list[Question]:
    """MMLU prompts: the subject's first `shots` dev questions (lm-evaluation-harness's `first_n` sampler)."""
    by_subject = _by_group(dev)
    out = []
    for record in records:
        subject = record.group
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots_of = _pool(by_subject, subject, shots, "MMLU subject")[:shots] if shots else []
        examples = [f"{_mmlu_block(d.fields)} {LETTERS[d.fields['answer']]}" for d in shots_of]
        context = header + "".join(e + "\n\n" for e in examples) + _mmlu_block(record.fields)
        letters = [LETTERS[i] for i in range(len(record.fields["choices"]))]
        out.append(Question(record.source, subject, context, [f" {x}" for x in letters], [1] * len(letters),
                            [record.fields["answer"]], "mmlu"))
    return out


def sampled_shots(records: list[Record], pool: list[Record], shots: int,
                  seed: int = HARNESS_FEWSHOT_SEED) -> list[list[Record]]:
    """Per record, `shots` examples of its group's pool, drawn as lm-evaluation-harness's default sampler
    draws them: each group is a harness task with its own `random.Random(seed)`, and every question in
    order takes `sample(pool, shots)` from it (so a question's examples depend on the questions before it)."""
    if not shots:
        return [[] for _ in records]
    groups, streams = _by_group(pool), {}
    out = []
    for record in records:
        chosen = _pool(groups, record.group, shots, "few-shot pool of")
        stream = streams.setdefault(record.group, random.Random(seed))
        out.append([chosen[i] for i in stream.sample(range(len(chosen)), shots)])
    return out


def _arc_text(fields: dict) -> str:
    return f"Question: {fields['question']}\nAnswer:"


def arc_questions(records: list[Record], train: list[Record] | None = None, shots: int = 0) -> list[Question]:
    """ARC prompts, with `shots` examples from the set's records in `train` (see `sampled_shots`)."""
    out = []
    for r, examples in zip(records, sampled_shots(records, train or [], shots)):
        prefix = "".join(f"{_arc_text(d.fields)} {d.fields['choices'][d.fields['answer']]}\n\n" for d in examples)
        choices = r.fields["choices"]
        out.append(Question(r.source, r.group, prefix + _arc_text(r.fields), [f" {c}" for c in choices],
                            [len(c) for c in choices], [r.fields["answer"]], "choice"))
    return out


def hellaswag_clean(text: str) -> str:
    """WikiHow artefacts out: ` [title]` becomes a sentence break, other bracketed tags go, double spaces go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_questions(records: list[Record]) -> list[Question]:
    out = []
    for r in records:
        f = r.fields
        context = hellaswag_clean(f"{f['activity_label']}: {f['ctx_a']} {f['ctx_b'].capitalize()}")
        endings = [hellaswag_clean(e) for e in f["endings"]]
        out.append(Question(r.source, r.group, context, [f" {e}" for e in endings], [len(e) for e in endings],
                            [int(f["label"])], "choice"))
    return out


def truthfulqa_questions(records: list[Record], primer: str = "") -> list[Question]:
    out = []
    for r in records:
        context = f"{primer}Q: {r.fields['question']}\nA:"
        for kind in ("mc1", "mc2"):
            choices, labels = r.fields[kind]
            out.append(Question(r.source, kind, context, [f" {c}" for c in choices], [len(c) for c in choices],
                                [i for i, v in enumerate(labels) if v], kind))
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def question_metrics(question: Question, logprobs: list[float]) -> dict[str, float]:
    """The question's scores and chance levels from its answers' summed log-probabilities."""
    n = len(logprobs)
    if question.kind == "mc2":
        peak = max(logprobs)
        weights = [math.exp(lp - peak) for lp in logprobs]
        return {"mc2": sum(weights[i] for i in question.gold) / sum(weights), "chance": len(question.gold) / n}
    acc = float(_argmax(logprobs) in question.gold)
    if question.kind == "mc1":
        return {"mc1": acc, "chance": 1.0 / n}
    if question.kind == "mmlu":
        return {"acc": acc, "chance": 1.0 / n}
    normed = [lp / max(length, 1) for lp, length in zip(logprobs, question.lengths)]
    return {"acc": acc, "acc_norm": float(_argmax(normed) in question.gold), "chance": 1.0 / n}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for row in rows for k in row})
    return {k: sum(row[k] for row in rows if k in row) / sum(1 for row in rows if k in row) for k in keys}


def summarize(task: str, questions: list[Question], logprobs: list[list[float]], details: bool = False) -> dict:
    """Per-group means, their macro average, the mean over all questions, and chance levels."""
    rows = [question_metrics(q, lp) for q, lp in zip(questions, logprobs)]
    groups: dict[str, list[dict[str, float]]] = {}
    for question, row in zip(questions, rows):
        groups.setdefault(question.group, []).append(row)
    if task == "truthfulqa":  # MC1 and MC2 are two metrics of the same questions, not two groups
        metrics = {**_mean(groups["mc1"]), **{k: v for k, v in _mean(groups["mc2"]).items() if k != "chance"}}
        chance = {"mc1": _mean(groups["mc1"])["chance"], "mc2": _mean(groups["mc2"])["chance"]}
        result = {"task": task, "kind": "benchmark", "n": len(groups["mc1"]),
                  "metrics": {"mc1": metrics["mc1"], "mc2": metrics["mc2"]}, "chance": chance}
    else:
        per_group = {name: {**_mean(g), "n": len(g)} for name, g in sorted(groups.items())}
        macro = _mean([{k: v for k, v in g.items() if k != "n"} for g in per_group.values()])
        micro = _mean(rows)
        result = {"task": task, "kind": "benchmark", "n": len(rows),
                  "metrics": {k: v for k, v in macro.items() if k != "chance"},
                  "micro": {k: v for k, v in micro.items() if k != "chance"}, "chance": macro["chance"]}
        if len(per_group) > 1 or next(iter(per_group), ""):
            result["groups"] = per_group
    if details:
        result["items"] = [{"source": q.source, "group": q.group, "logprobs": lp, **row}
                           for q, lp, row in zip(questions, logprobs, rows)]
    return result
