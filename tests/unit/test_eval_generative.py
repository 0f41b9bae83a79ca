"""GSM8K answer extraction and exact match, pass@k, HumanEval grading in the sandbox, and the comparison table."""

from __future__ import annotations

import json
import math
from itertools import combinations

import pytest

from megatron_llm.evaluation import compare, generative
from megatron_llm.evaluation.formats import Record
from megatron_llm.evaluation.sandbox import Limits, Sandbox


def test_gsm8k_extraction_and_exact_match():
    records = [Record(f"f:{i}", {"question": "q", "answer": "", "target": t})
               for i, t in enumerate(["72", "1234", "5", "-3", "0.5"])]
    completions = [
        " Natalia sold 48/2 = 24 clips in May. 48+24 = 72\n#### 72",  # both
        " The total is $1,234.",  # flexible only (no ####)
        " #### 5.0",  # 5.0 equals 5
        " It drops by 3 degrees, so -3\n#### 3",  # strict wrong, flexible also takes the last number (3)
        " half: 0.5 then 7",  # flexible takes the last number: 7, wrong
    ]
    result = generative.grade_gsm8k(records, completions, details=True)
    assert [(i["strict"], i["flexible"]) for i in result["items"]] == [
        ("72", "72"), (None, "1234"), ("5", "5"), ("3", "3"), (None, "7")]
    assert result["metrics"] == {"exact_match_strict": 2 / 5, "exact_match_flexible": 3 / 5}
    shots = [Record("s", {"question": "1+1?", "answer": "2\n#### 2"})]
    assert generative.gsm8k_prompt("2+2?", shots) == "Question: 1+1?\nAnswer: 2\n#### 2\n\nQuestion: 2+2?\nAnswer:"


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_pass_at_k_is_the_unbiased_estimator(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            closed = 1.0 - math.comb(n - c, k) / math.comb(n, k)
            # And by enumeration: the fraction of k-subsets of the n samples holding a passing one.
            samples = [True] * c + [False] * (n - c)
            subsets = list(combinations(samples, k))
            counted = sum(any(s) for s in subsets) / len(subsets)
            assert generative.pass_at_k(n, c, k) == pytest.approx(closed, abs=1e-12) == pytest.approx(counted)
    # Negative control: the naive estimate (c / n)^... is not it: 1 - (1 - c/n)^k differs for n=5, c=2, k=2.
    assert abs(generative.pass_at_k(5, 2, 2) - (1 - (1 - 2 / 5) ** 2)) > 0.05


def test_humaneval_problems_graded_in_the_sandbox(tmp_path):
    problems = [
        {"task_id": "HumanEval/0", "prompt": "def add(a, b):\n    \"\"\"Sum of a and b.\"\"\"\n",
         "canonical_solution": "    return a + b\n", "entry_point": "add",
         "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"},
        {"task_id": "HumanEval/1", "prompt": "def rev(s):\n", "canonical_solution": "    return s[::-1]\n",
         "entry_point": "rev", "test": "def check(candidate):\n    assert candidate('abc') == 'cba'\n"},
    ]
    records = [Record(f"he:{i}", p) for i, p in enumerate(problems)]
    samples = [
        ["    return a + b\n", "    return a - b\n", "    while True:\n        pass\n"],
        ["    import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return s[::-1]\n",
         "    return s[::-1]\n", "    return ''.join(reversed(s))\n"],
    ]
    sandbox = Sandbox(Limits(cpu_seconds=1, wall_seconds=5), hide=[tmp_path])
    result = generative.grade_humaneval(records, samples, sandbox, [1, 2, 5], details=True)
    assert [i["passed"] for i in result["items"]] == [1, 2]
    statuses = [o["status"] for o in result["items"][0]["outcomes"]]
    assert statuses[0] == "passed" and statuses[1] == "failed" and statuses[2] in ("killed", "timeout")
    assert result["items"][1]["outcomes"][0]["status"] == "failed"  # the network call fails in the sandbox
    expected_1 = ((1 - math.comb(2, 1) / math.comb(3, 1)) + (1 - math.comb(1, 1) / math.comb(3, 1))) / 2
    expected_2 = ((1 - math.comb(2, 2) / math.comb(3, 2)) + 1.0) / 2
    assert result["metrics"] == pytest.approx({"pass@1": expected_1, "pass@2": expected_2})
    assert "pass@5" not in result["metrics"]  # needs 5 samples per problem


def test_comparison_table_reads_evaluate_and_lm_eval_results(tmp_path):
    ours = {"results": [{"task": "arc", "kind": "benchmark", "n": 6, "metrics": {"acc": 0.5, "acc_norm": 0.25},
                         "chance": 0.25},
                        {"task": "gsm8k", "kind": "generative", "n": 2, "metrics": {"exact_match_strict": 0.0},
                         "chance": 0.0}]}
    lm_eval = {"results": {"arc": {"alias": "arc", "acc,none": 0.75, "acc_stderr,none": 0.1, "acc_norm,none": 0.5}}}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(lm_eval))
    table = compare.comparison_table(compare.flatten(ours), compare.load_other(path), "ours", "llama")
    lines = table.splitlines()
    assert lines[0].split() == ["task", "metric", "ours", "llama", "difference"]
    assert ["arc", "acc", "0.5000", "0.7500", "-0.2500"] in [line.split() for line in lines]
    assert any(line.split() == ["gsm8k", "exact_match_strict", "0.0000", "-"] for line in lines)
    assert not any("stderr" in line for line in lines)
    path.write_text("{not json")
    from megatron_llm.errors import UsageError

    with pytest.raises(UsageError, match=r"other.json:1: invalid JSON"):
        compare.load_other(path)
