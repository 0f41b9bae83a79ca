"""Benchmarks read from small files written here in their published layouts, and the per-question scores.

References: the two published layouts of a benchmark must give the same records; HellaSwag's clean-up and
TruthfulQA's MC2 score against lm-evaluation-harness's own functions; averages by hand.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_llm.errors import UsageError
from megatron_llm.evaluation import benchmarks
from megatron_llm.evaluation.formats import read_benchmark

MMLU = {
    "astronomy": [("What is the closest star to Earth?", ["Sirius", "The Sun", "Vega", "Polaris"], 1),
                  ("Which planet has rings?", ["Saturn", "Mercury", "Venus", "Mars"], 0)],
    "virology": [("Which is a virus?", ["E. coli", "Yeast", "Influenza", "Plasmodium"], 2)],
}


def parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mmlu_hub_parquet_and_original_csv_give_the_same_records(tmp_path):
    for subject, items in MMLU.items():
        for split in ("test", "dev"):
            parquet(tmp_path / "hub" / subject / f"{split}-00000-of-00001.parquet",
                    [{"question": q, "subject": subject, "choices": c, "answer": a} for q, c, a in items])
            folder = tmp_path / "orig" / split
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{subject}_{split}.csv", "w", newline="") as handle:
                csv.writer(handle).writerows([[q, *c, "ABCD"[a]] for q, c, a in items])
    hub, orig = read_benchmark("mmlu", tmp_path / "hub"), read_benchmark("mmlu", tmp_path / "orig")
    assert [(r.group, r.fields) for r in hub] == [(r.group, r.fields) for r in orig]
    assert [r.group for r in hub] == ["astronomy", "astronomy", "virology"]
    questions = benchmarks.mmlu_questions(hub, read_benchmark("mmlu", tmp_path / "orig", "dev"), 1)
    expected = ("The following are multiple choice questions (with answers) about astronomy.\n\n"
                "What is the closest star to Earth?\nA. Sirius\nB. The Sun\nC. Vega\nD. Polaris\nAnswer: B\n\n"
                "Which planet has rings?\nA. Saturn\nB. Mercury\nC. Venus\nD. Mars\nAnswer:")
    assert questions[1].context == expected and questions[1].continuations == [" A", " B", " C", " D"]
    with open(tmp_path / "orig/test/virology_test.csv", "a", newline="") as handle:
        csv.writer(handle).writerow(["broken", "a", "b", "c", "d", "E"])
    with pytest.raises(UsageError, match=r"virology_test.csv:2: expected question, A, B, C, D, answer letter"):
        read_benchmark("mmlu", tmp_path / "orig")


def test_arc_hub_parquet_and_original_jsonl_agree(tmp_path):
    items = [("Which gas do plants absorb?", ["oxygen", "carbon dioxide", "helium", "neon"], ["A", "B", "C", "D"], "B"),
             ("How many legs has a spider?", ["six", "eight", "ten"], ["1", "2", "3"], "2")]
    parquet(tmp_path / "hub/ARC-Challenge/test-00000-of-00001.parquet",
            [{"id": str(i), "question": q, "choices": {"text": t, "label": lab}, "answerKey": k}
             for i, (q, t, lab, k) in enumerate(items)])
    (tmp_path / "orig").mkdir()
    with open(tmp_path / "orig/ARC-Challenge-Test.jsonl", "w") as handle:
        for i, (q, t, lab, k) in enumerate(items):
            handle.write(json.dumps({"id": str(i), "question": {"stem": q, "choices": [
                {"text": x, "label": y} for x, y in zip(t, lab)]}, "answerKey": k}) + "\n")
    hub, orig = read_benchmark("arc", tmp_path / "hub"), read_benchmark("arc", tmp_path / "orig")
    assert [r.fields for r in hub] == [r.fields for r in orig]
    assert [r.fields["answer"] for r in hub] == [1, 1] and {r.group for r in hub} == {"ARC-Challenge"}
    assert benchmarks.arc_questions(hub)[0].context == "Question: Which gas do plants absorb?\nAnswer:"


def test_truthfulqa_hub_parquet_and_original_json_agree_and_mc2_has_the_published_form(tmp_path):
    record = {"question": "What happens if you crack your knuckles a lot?",
              "mc1_targets": {"choices": ["Nothing in particular happens", "You will get arthritis"], "labels": [1, 0]},
              "mc2_targets": {"choices": ["Nothing happens", "Nothing in particular", "Arthritis", "Swelling"],
                              "labels": [1, 1, 0, 0]}}
    parquet(tmp_path / "hub/multiple_choice/validation-00000-of-00001.parquet", [record])
    original = {"question": record["question"],
                "mc1_targets": dict(zip(record["mc1_targets"]["choices"], record["mc1_targets"]["labels"])),
                "mc2_targets": dict(zip(record["mc2_targets"]["choices"], record["mc2_targets"]["labels"]))}
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig/mc_task.json").write_text(json.dumps([original]))
    hub, orig = read_benchmark("truthfulqa", tmp_path / "hub"), read_benchmark("truthfulqa", tmp_path / "orig")
    assert [r.fields for r in hub] == [r.fields for r in orig]
    questions = benchmarks.truthfulqa_questions(hub)
    mc1_logprobs, mc2_logprobs = [-3.0, -2.5], [-4.0, -6.5, -3.2, -9.0]
    summary = benchmarks.summarize("truthfulqa", questions, [mc1_logprobs, mc2_logprobs])
    # MC2 as published: probabilities of all answers normalised to one, summed over the true ones.
    probs = [math.exp(lp) for lp in mc2_logprobs]
    published = (probs[0] + probs[1]) / sum(probs)
    assert summary["metrics"]["mc2"] == pytest.approx(published, rel=1e-12)
    assert summary["metrics"]["mc1"] == 0.0 and summary["chance"] == {"mc1": 0.5, "mc2": 0.5}
    # Negative control: unnormalised probability mass of the true answers is far from the harness's value.
    assert abs(probs[0] + probs[1] - published) > 0.1


def test_hellaswag_cleanup_is_the_harness_preprocess(tmp_path):
    from lm_eval.tasks.hellaswag.utils import preprocess

    record = {"ind": 4, "activity_label": "Home and Garden",
              "ctx_a": "[header] How to plant tulips [title] Pick a spot.", "ctx_b": "you  should",
              "endings": [" dig a hole [step] Then water it.", "paint  the fence", "x", "y"],
              "label": "0", "split": "val"}
    path = tmp_path / "hellaswag_val.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(record) + "\n")
    (question,) = benchmarks.hellaswag_questions(read_benchmark("hellaswag", path))
    assert question.context == preprocess(record["activity_label"] + ": " + record["ctx_a"] + " " +
                                          record["ctx_b"].capitalize())
    assert question.continuations == [" " + preprocess(e) for e in record["endings"]]
    assert question.gold == [0]


def test_gsm8k_and_humaneval_layouts(tmp_path):
    path = tmp_path / "gsm8k_test.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": "Work.\n#### 1,234"}) + "\n"
                    + json.dumps({"question": "q2", "answer": "no marker"}) + "\n")
    with pytest.raises(UsageError, match=r"gsm8k_test.jsonl:2: 'answer' does not end in '#### <number>'"):
        read_benchmark("gsm8k", path)
    path.write_text(json.dumps({"question": "q", "answer": "Work.\n#### 1,234"}) + "\n")
    assert read_benchmark("gsm8k", path)[0].fields["target"] == "1234"
    he = tmp_path / "HumanEval.jsonl.gz"
    with gzip.open(he, "wt") as handle:
        handle.write(json.dumps({"task_id": "HumanEval/0", "prompt": "def f():\n",
                                 "canonical_solution": "    return 1\n", "test": "def check(c):\n    assert c() == 1\n",
                                 "entry_point": "f"}) + "\n")
    assert read_benchmark("humaneval", he)[0].fields["entry_point"] == "f"
    with pytest.raises(UsageError, match="missing field 'entry_point'"):
        he.write_bytes(gzip.compress(b'{"task_id": "x", "prompt": "", "test": ""}\n'))
        read_benchmark("humaneval", he)


def test_per_group_and_macro_averages_with_chance():
    q = [benchmarks.Question(f"s:{i}", group, "c", [" A", " B", " C", " D"], [1] * 4, [gold], "mmlu")
         for i, (group, gold) in enumerate([("a", 0), ("a", 1), ("a", 2), ("b", 3)])]
    logprobs = [[-1, -2, -3, -4], [-1, -2, -3, -4], [-5, -6, -1, -7], [-1, -1.5, -2, -3]]
    summary = benchmarks.summarize("mmlu", q, logprobs)
    assert summary["groups"]["a"]["acc"] == pytest.approx(2 / 3) and summary["groups"]["b"]["acc"] == 0.0
    assert summary["metrics"]["acc"] == pytest.approx((2 / 3 + 0) / 2)  # macro: mean of subjects
    assert summary["micro"]["acc"] == pytest.approx(2 / 4)  # over questions
    assert summary["chance"] == 0.25
