"""Benchmarks during training: logged to every metrics writer, equal to `evaluate` on the saved checkpoint,
and the training trajectory bit for bit the same as without them (with dropout on, so any draw from the
random state or a model left in eval mode would show)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.eval_fixture import REPO, command_env, run

STEPS = 4
# Runs `megatron-llm` with the evaluation callback's random-state guard replaced by one that draws from the
# random state and does not restore it: the bug the guard prevents (the negative control).
LEAKY = """
import sys
from contextlib import contextmanager
import torch
from megatron_llm.training.callbacks import periodic_eval

@contextmanager
def leaky():
    torch.rand(1)
    yield

periodic_eval.preserved_random_state = leaky
from megatron_llm.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_llm.data.curate.corpus import stdlib_docstrings
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
    from megatron_llm.posttrain import synthetic

    root = tmp_path_factory.mktemp("during")
    texts = stdlib_docstrings(120, min_chars=200)
    tok_dir = synthetic.write_tokenizer(root / "tok", texts, 400)
    tok = load_tokenizer(tok_dir)
    builder = IndexedDatasetBuilder(str(root / "docs.bin"), dtype=np.int32)
    for text in texts:
        ids = tok.encode(text) + [tok.eod_id]
        builder.add_document(ids, [len(ids)])
    builder.finalize(str(root / "docs.idx"))
    rows = []
    for k, text in enumerate(texts[:5]):
        words = text.split()
        rows.append({"id": str(k), "question": " ".join(words[:8]) + "?", "answerKey": "B",
                     "choices": {"text": [" ".join(words[8 + 2 * j:10 + 2 * j]) for j in range(3)],
                                 "label": ["A", "B", "C"]}})
    (root / "arc").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), root / "arc" / "test-00000-of-00001.parquet")
    with open(root / "gsm8k.jsonl", "w") as handle:
        for k in range(2):
            handle.write(json.dumps({"question": f"What is {k} plus {k}?", "answer": f"It is {2 * k}.\n#### {2 * k}"})
                         + "\n")
    base = ["--config", "examples/configs/tiny.yaml", "--set", f"data.tokenizer={tok_dir}",
            "--set", f"data.paths=[{root / 'docs'}]", "--set", "data.synthetic=false", "--set", "data.split=95,5,0",
            "--set", f"schedule.train_iters={STEPS}", "--set", f"checkpoint.save_interval={STEPS}",
            "--set", "model.hidden_dropout=0.1", "--set", "model.attention_dropout=0.1",
            "--set", "optim.warmup_iters=0", "--set", "logging.progress=false"]
    evaluation = ["--set", f"evaluation.tasks=[{{task: arc, data: {root / 'arc'}, every: 2}}, "
                           f"{{task: gsm8k, data: {root / 'gsm8k.jsonl'}, every: 2, num_fewshot: 0, "
                           "max_new_tokens: 6}]"]
    run("train", *base, "--run-dir", str(root / "plain"))
    run("train", *base, *evaluation, "--run-dir", str(root / "evaluated"))
    leaky = subprocess.run([sys.executable, "-c", LEAKY, "train", *base, *evaluation, "--run-dir",
                            str(root / "leaky")], cwd=REPO, env=command_env(), capture_output=True, text=True,
                           timeout=900)
    assert leaky.returncode == 0, leaky.stderr[-4000:]
    return root


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def losses(run_dir: Path) -> list[tuple[int, float, float]]:
    return [(m["step"], m["loss"], m["grad_norm"]) for m in metrics(run_dir) if "loss" in m]


def test_training_trajectory_is_bit_for_bit_unchanged(work):
    plain, evaluated = losses(work / "plain"), losses(work / "evaluated")
    assert len(plain) == STEPS and plain == evaluated  # float equality: bit for bit
    # Negative control: an evaluation that draws from the random state without restoring it changes the
    # dropout masks, hence the losses after the first evaluation.
    leaky = losses(work / "leaky")
    assert leaky[:2] == plain[:2] and leaky[2:] != plain[2:]


def test_results_reach_every_writer_and_equal_evaluate_on_the_checkpoint(work):
    records = [m for m in metrics(work / "evaluated") if any(k.startswith("eval/") for k in m)]
    assert [r["step"] for r in records] == [2, 4]
    last = records[-1]
    assert {"eval/arc/acc", "eval/arc/acc_norm", "eval/gsm8k/exact_match_strict"} <= set(last)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(work / "evaluated" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/arc/acc")] == [2, 4]
    assert events.Scalars("eval/arc/acc_norm")[-1].value == pytest.approx(last["eval/arc/acc_norm"])
    out = run("evaluate", "--checkpoint", str(work / "evaluated" / "checkpoints"), "--task", "arc", "--data",
              str(work / "arc"), "--json")
    result = json.loads(out.stdout)["results"][0]
    assert result["metrics"]["acc"] == last["eval/arc/acc"] and result["metrics"]["acc_norm"] == last[
        "eval/arc/acc_norm"]


def test_bad_evaluation_entries_name_the_field(tmp_path):
    from megatron_llm.errors import UsageError
    from megatron_llm.training.callbacks.periodic_eval import parse_specs

    with pytest.raises(UsageError, match=r"evaluation.tasks\[1\].every: expected a positive number"):
        parse_specs([{"task": "arc", "data": "x", "every": 2}, {"task": "arc", "data": "x", "every": 0}])
    with pytest.raises(UsageError, match=r"evaluation.tasks\[0\].task: expected one of"):
        parse_specs([{"task": "nope", "data": "x", "every": 2}])
