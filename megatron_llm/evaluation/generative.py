"""Generate-and-grade benchmarks: GSM8K-style maths (final number, exact match) and HumanEval-style code
(completions run against the task's unit tests in the sandbox; pass@k).

GSM8K prompts follow the published few-shot form: `Question: ...\nAnswer: <worked answer ending #### N>`
examples (from a file in GSM8K's own layout), blank lines between them, then the question and `Answer:`.
Generation stops at the next `Question:` (or end of document). Two extractions are reported: `strict`
takes the number after `####`, `flexible` the last number in the completion; numbers compare after removing
`,` and `$` and a trailing `.`, as decimals (`5.0` equals `5`).

HumanEval: the completion follows the function's prompt, stops at a new top-level statement, and the
program `prompt + completion + test + check(entry_point)` must exit 0. pass@k uses the unbiased estimator
1 - C(n - c, k) / C(n, k) of n samples with c passing, averaged over problems.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from megatron_llm.evaluation.formats import Record
from megatron_llm.evaluation.sandbox import Sandbox

GSM8K_STOPS = ["Question:"]
HUMANEVAL_STOPS = ["\nclass ", "\ndef ", "\n#", "\nif ", "\nprint("]
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
_NUMBER = re.compile(r"-?[$0-9.,]*[0-9]")


def gsm8k_prompt(question: str, shots: list[Record]) -> str:
    examples = "".join(f"Question: {s.fields['question']}\nAnswer: {s.fields['answer']}\n\n" for s in shots)
    return f"{examples}Question: {question}\nAnswer:"


def canonical_number(text: str | None) -> str | None:
    """A number as a canonical decimal string, or None when `text` is not one."""
    if text is None:
        return None
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    return format(value.normalize(), "f") if value == value.to_integral() else str(value.normalize())


def extract_answers(completion: str) -> dict[str, str | None]:
    """The final answer by both extractions: after `####` (strict) and the last number (flexible)."""
    strict = _STRICT.search(completion)
    numbers = _NUMBER.findall(completion)
    return {"strict": canonical_number(strict.group(1)) if strict else None,
            "flexible": canonical_number(numbers[-1]) if numbers else None}


def grade_gsm8k(records: list[Record], completions: list[str], details: bool = False) -> dict:
    hits = {"strict": 0, "flexible": 0}
    items = []
    for record, completion in zip(records, completions):
        target = canonical_number(record.fields["target"])
        found = extract_answers(completion)
        for mode in hits:
            hits[mode] += found[mode] is not None and found[mode] == target
        if details:
            items.append({"source": record.source, "target": target, "completion": completion, **found})
    n = max(len(records), 1)
    result = {"task": "gsm8k", "kind": "generative", "n": len(records),
              "metrics": {"exact_match_strict": hits["strict"] / n, "exact_match_flexible": hits["flexible"] / n},
              "chance": 0.0}
    if details:
        result["items"] = items
    return result


def humaneval_program(record: Record, completion: str) -> str:
    f = record.fields
    return f"{f['prompt']}{completion}\n\n{f['test']}\n\ncheck({f['entry_point']})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples passes) from n samples with c passing."""
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def grade_humaneval(records: list[Record], samples: list[list[str]], sandbox: Sandbox, ks: list[int],
                    details: bool = False, on_result: Callable[[int], None] | None = None) -> dict:
    """Run every sample's program; pass@k for each k <= the number of samples per problem."""
    per_problem = []
    items = []
    for index, (record, completions) in enumerate(zip(records, samples)):
        outcomes = [sandbox.run(humaneval_program(record, c)) for c in completions]
        passed = sum(o.passed for o in outcomes)
        per_problem.append((len(completions), passed))
        if details:
            items.append({"task_id": record.fields["task_id"], "passed": passed, "samples": len(completions),
                          "outcomes": [{"status": o.status, **o.detail} for o in outcomes],
                          "completions": completions})
        if on_result is not None:
            on_result(index)
    n = min((s for s, _ in per_problem), default=0)
    metrics = {f"pass@{k}": sum(pass_at_k(s, c, k) for s, c in per_problem) / max(len(per_problem), 1)
               for k in ks if k <= n}
    result = {"task": "humaneval", "kind": "generative", "n": len(records), "samples": n, "metrics": metrics,
              "chance": 0.0, "sandbox": sandbox.mode}
    if details:
        result["items"] = items
    return result
