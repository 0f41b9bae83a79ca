"""Log-likelihood multiple choice, scored the way lm-evaluation-harness scores MMLU, HellaSwag and ARC.

A task file is JSONL, one question a line: `{"context": "...", "choices": ["...", ...], "answer": i}`
(`question` is accepted for `context`). Each choice is scored by the summed log-probability of its tokens
given the context: `acc` picks the highest sum, `acc_norm` the highest sum per character of the choice.
Tokens: the context and the context+choice are encoded, the choice's tokens are what follows the context's
(trailing whitespace of the context moves to the choice), as lm-evaluation-harness does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from megatron_llm.posttrain.records import DataReport, read_jsonl


@dataclass
class Question:
    line: int
    context: str
    choices: list[str]
    answer: int


def load_task(path: str | Path, strict: bool = False) -> tuple[list[Question], DataReport]:
    report = DataReport(str(path), strict=strict)
    questions = []
    for line, record in read_jsonl(path, report):
        context = record.get("context", record.get("question"))
        choices, answer = record.get("choices"), record.get("answer")
        if not isinstance(context, str):
            report.reject(line, "missing 'context' (a string)", "missing field")
        elif not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            report.reject(line, "'choices' must be a list of two or more non-empty strings", "bad choices")
        elif not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            report.reject(line, f"'answer' must be an index into the {len(choices)} choices, got {answer!r}",
                          "bad answer")
        else:
            questions.append(Question(line, context, choices, answer))
            report.used += 1
    return questions, report


def encode_pair(tokenizer: object, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer.encode(context + continuation))
    ctx = list(tokenizer.encode(context)) if context else []
    shared = 0
    for a, b in zip(ctx, whole):
        if a != b:
            break
        shared += 1
    ctx_ids, cont_ids = whole[:shared], whole[shared:]
    if not ctx_ids:
        ctx_ids = [tokenizer.eod_id]
    return ctx_ids, cont_ids


def choice_sequences(questions: list[Question], tokenizer: object) -> list[tuple[list[int], list[bool]]]:
    """(ids, scored mask) for every (question, choice), question-major."""
    sequences = []
    for q in questions:
        for choice in q.choices:
            ctx, cont = encode_pair(tokenizer, q.context, choice)
            sequences.append((ctx + cont, [False] * len(ctx) + [True] * len(cont)))
    return sequences


def summarize(questions: list[Question], logprobs: list[float], name: str, details: bool) -> dict:
    """Accuracy (sum) and normalised accuracy (per character), chance level, and per-question details."""
    correct = correct_norm = 0
    chance = 0.0
    items = []
    k = 0
    for q in questions:
        scores = logprobs[k:k + len(q.choices)]
        k += len(q.choices)
        normed = [s / max(len(c), 1) for s, c in zip(scores, q.choices)]
        pred = max(range(len(scores)), key=scores.__getitem__)
        pred_norm = max(range(len(normed)), key=normed.__getitem__)
        correct += pred == q.answer
        correct_norm += pred_norm == q.answer
        chance += 1.0 / len(q.choices)
        if details:
            items.append({"line": q.line, "answer": q.answer, "pred": pred, "pred_norm": pred_norm,
                          "logprobs": scores})
    n = max(len(questions), 1)
    result = {"task": name, "kind": "multiple-choice", "questions": len(questions), "acc": correct / n,
              "acc_norm": correct_norm / n, "chance": chance / n}
    if details:
        result["items"] = items
    return result
