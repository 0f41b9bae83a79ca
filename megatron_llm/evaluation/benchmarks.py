"""Prompts and scores of the log-likelihood benchmarks (MMLU, TruthfulQA MC1/MC2, HellaSwag, ARC).

Prompts follow the published evaluation setups as lm-evaluation-harness runs them:
- MMLU: `The following are multiple choice questions (with answers) about <subject>.` then k examples of the
  subject's dev split (the first k) and the question, each `question\nA. ..\nB. ..\nC. ..\nD. ..\nAnswer:`,
  answers ` A`..` D`; `acc`.
- ARC: `Question: <question>\nAnswer:`, the choice texts as answers; `acc` and `acc_norm`.
- HellaSwag: `<activity>: <ctx_a> <Ctx_b>` with WikiHow's bracket artefacts removed, endings as answers;
  `acc` and `acc_norm`.
- TruthfulQA: `Q: <question>\nA:` (zero-shot, or after a primer read from `--primer FILE`); MC1 `acc` is
  whether the single true answer scores highest, MC2 the normalised probability mass of the true answers.
`acc_norm` divides each answer's log-likelihood by its length in characters. Each report has per-group means
(MMLU subjects, ARC sets), their macro average, the mean over all questions, and the chance level.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from megatron_llm.evaluation.formats import LETTERS, Record


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


def mmlu_questions(records: list[Record], dev: list[Record], shots: int) -> list[Question]:
    by_subject: dict[str, list[Record]] = {}
    for record in dev:
        by_subject.setdefault(record.group, []).append(record)
    out = []
    for record in records:
        subject = record.group
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        shots_of = by_subject.get(subject, [])[:shots]
        examples = [f"{_mmlu_block(d.fields)} {LETTERS[d.fields['answer']]}" for d in shots_of]
        context = header + "".join(e + "\n\n" for e in examples) + _mmlu_block(record.fields)
        letters = [LETTERS[i] for i in range(len(record.fields["choices"]))]
        out.append(Question(record.source, subject, context, [f" {x}" for x in letters], [1] * len(letters),
                            [record.fields["answer"]], "mmlu"))
    return out


def arc_questions(records: list[Record]) -> list[Question]:
    return [Question(r.source, r.group, f"Question: {r.fields['question']}\nAnswer:",
                     [f" {c}" for c in r.fields["choices"]], [len(c) for c in r.fields["choices"]],
                     [r.fields["answer"]], "choice") for r in records]


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
