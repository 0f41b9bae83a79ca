"""Post-training in parallel layouts. DPO end to end: log(2) at the first step, rising reward accuracy, and
TP=2 x PP=2 matching one process; packed SFT and `evaluate` matching one process too.

The base model is the tiny model pre-trained two steps; the preferences prefer the right answer of
"reverse this word" / "add these numbers" over a refusal or a wrong answer of the same form. Both runs compute their
reference log-probabilities in their own layout.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_llm.posttrain import synthetic
from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate

REPO = Path(__file__).resolve().parents[2]
STEPS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if nproc == 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
        command = [sys.executable, "-m", "megatron_llm", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "megatron_llm", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(args[:1])} x{nproc} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}")
    return result


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("dpo")
    template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    items = synthetic.tasks(300, 4)
    texts = [template.render(r["messages"]) for r in synthetic.chat_records(items)]
    tok_dir = synthetic.write_tokenizer(root / "tok", texts, 300)
    prefs = synthetic.preference_records(items)
    prefs.insert(10, {"prompt": "add these numbers: 1 + 1", "chosen": "2", "rejected": "2"})
    synthetic.write_jsonl(root / "prefs.jsonl", prefs)
    launch(1, "train", "--config", "examples/configs/tiny.yaml", "--set", f"data.tokenizer={tok_dir}",
           "--set", "schedule.train_iters=2", "--set", "optim.warmup_iters=0", "--set", "checkpoint.save_interval=2",
           "--set", "logging.progress=false", "--set", "logging.tensorboard=false", "--run-dir", str(root / "base"))
    common = ["dpo", "--config", "examples/configs/dpo-tiny.yaml", "--init", str(root / "base/checkpoints"),
              "--data", str(root / "prefs.jsonl"), "--beta", "0.5", "--set", f"schedule.train_iters={STEPS}",
              "--set", "schedule.eval_interval=8", "--set", "logging.tensorboard=false",
              "--set", "checkpoint.save_interval=null"]
    single = launch(1, *common, "--run-dir", str(root / "single"))
    launch(4, *common, "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2", "--run-dir", str(root / "tp2pp2"))
    return {"root": root, "single_stderr": single.stderr}


def _series(records: list[dict], key: str) -> list[float]:
    return [r[key] for r in records if key in r]


def test_first_loss_is_log2_and_reward_accuracy_rises(runs):
    records = metrics(runs["root"] / "single")
    losses = _series(records, "loss")
    accuracy = _series(records, "reward_accuracy")
    margins = _series(records, "reward_margin")
    assert len(losses) == STEPS and len(accuracy) == STEPS
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert accuracy[0] == 0.0 and margins[0] == pytest.approx(0.0, abs=1e-5)
    assert sum(accuracy[-8:]) / 8 > 0.6 and sum(margins[-8:]) / 8 > 0.2
    assert sum(losses[-8:]) / 8 < math.log(2) - 0.1
    val = _series(records, "val_loss")
    assert len(val) == 2 and val[-1] < math.log(2) - 0.2
    assert f"{runs['root'] / 'prefs.jsonl'}:11: 'chosen' and 'rejected' are identical" in runs["single_stderr"]
    assert "300 of 301 records used, 1 rejected (1 chosen equals rejected)" in runs["single_stderr"]


def test_tensor_and_pipeline_parallel_match_one_process(runs):
    single = metrics(runs["root"] / "single")
    parallel = metrics(runs["root"] / "tp2pp2")
    for key in ("loss", "reward_accuracy", "reward_margin", "val_loss"):
        ours, theirs = _series(single, key), _series(parallel, key)
        assert len(ours) == len(theirs) > 0
        assert theirs == pytest.approx(ours, rel=2e-4, abs=1e-5), key


def test_evaluate_scores_the_same_under_pipeline_parallel(runs):
    root = runs["root"]
    template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    held_out = synthetic.tasks(12, 6)

    def render(question: str) -> str:
        return template.render([{"role": "user", "content": question}], add_generation_prompt=True)

    synthetic.write_jsonl(root / "mc.jsonl", synthetic.mc_records(held_out, render, seed=1))
    args = ["evaluate", "--checkpoint", str(root / "base/checkpoints"),
            "--tasks", "multiple-choice", "--data", str(root / "mc.jsonl"), "--json", "--details",
            "--micro-batch-size", "3"]
    one = json.loads(launch(1, *args).stdout)["results"][0]
    two = json.loads(launch(2, *args, "--set", "parallel.pipeline=2").stdout)["results"][0]
    assert one["questions"] == two["questions"] == 12
    for a, b in zip(one["items"], two["items"]):
        assert b["logprobs"] == pytest.approx(a["logprobs"], rel=1e-5, abs=1e-5)


def test_packed_sft_matches_one_process_under_tensor_and_pipeline_parallel(runs):
    root = runs["root"]
    synthetic.write_jsonl(root / "chat.jsonl", synthetic.chat_records(synthetic.tasks(80, 7)))
    common = ["sft", "--config", "examples/configs/sft-tiny.yaml", "--init", str(root / "base/checkpoints"),
              "--data", str(root / "chat.jsonl"), "--set", "schedule.train_iters=3", "--set", "optim.warmup_iters=0",
              "--set", "schedule.eval_interval=null", "--set", "checkpoint.save_interval=null",
              "--set", "logging.tensorboard=false"]
    launch(1, *common, "--run-dir", str(root / "sft_single"))
    launch(4, *common, "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2",
           "--run-dir", str(root / "sft_tp2pp2"))
    single, parallel = metrics(root / "sft_single"), metrics(root / "sft_tp2pp2")
    for key in ("loss", "grad_norm", "val_loss"):
        ours, theirs = _series(single, key), _series(parallel, key)
        assert len(ours) == len(theirs) > 0
        assert theirs == pytest.approx(ours, rel=1e-4), key
