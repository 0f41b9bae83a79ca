"""SFT on synthetic instructions, then evaluate, generate, export and run lm-evaluation-harness offline.

One chain of real commands: pre-train the tiny model a little (the base), fine-tune it on "reverse this
word" / "add these numbers" conversations, and compare the base and the SFT model on held-out prompts of the
same kind: multiple-choice accuracy (`evaluate`), perplexity on a held-out shard, greedy answers
(`generate`). The SFT model is exported to Hugging Face; `transformers` must give the same log-likelihoods
as `evaluate`, and `lm_eval` must score the same task from local files with the network switched off.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_llm.posttrain import synthetic
from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate

REPO = Path(__file__).resolve().parents[2]
TEMPLATE = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
SFT_STEPS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(*args: str, cwd: Path = REPO, timeout: int = 900) -> subprocess.CompletedProcess:
    """A megatron-llm command in its own process; fails the test with its output when it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           **OFFLINE}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    result = subprocess.run([sys.executable, "-m", "megatron_llm", *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if result.returncode != 0:
        pytest.fail(f"megatron-llm {args[0]} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-5000:]}")
    return result


def prompt_text(question: str) -> str:
    return TEMPLATE.render([{"role": "user", "content": question}], add_generation_prompt=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("sft")
    train = synthetic.chat_records(synthetic.tasks(600, 1))
    held_out = synthetic.tasks(64, 2)
    tok_dir = synthetic.write_tokenizer(root / "tok", [TEMPLATE.render(r["messages"]) for r in train], 300)
    bad = [{"messages": [{"role": "user", "content": "no answer"}]},
           {"messages": [{"content": "a turn without a role"}, {"role": "assistant", "content": "x"}]}]
    synthetic.write_jsonl(root / "chat.jsonl", train[:300] + bad + train[300:])
    synthetic.write_jsonl(root / "mc.jsonl", synthetic.mc_records(held_out, prompt_text, seed=5))
    tok = load_tokenizer(tok_dir)
    builder = IndexedDatasetBuilder(str(root / "heldout.bin"), dtype=np.int32)
    shard_tokens = 0
    for record in synthetic.chat_records(held_out):
        ids = tok.encode(TEMPLATE.render(record["messages"])) + [tok.eod_id]
        builder.add_document(ids, [len(ids)])
        shard_tokens += len(ids)
    builder.finalize(str(root / "heldout.idx"))
    run("train", "--config", "examples/configs/tiny.yaml", "--set", f"data.tokenizer={tok_dir}",
        "--set", "schedule.train_iters=2", "--set", "optim.warmup_iters=0", "--set", "checkpoint.save_interval=2",
        "--set", "logging.progress=false", "--set", "logging.tensorboard=false", "--run-dir", str(root / "base"))
    sft = run("sft", "--config", "examples/configs/sft-tiny.yaml", "--init", str(root / "base/checkpoints"),
              "--data", str(root / "chat.jsonl"), "--set", f"schedule.train_iters={SFT_STEPS}",
              "--set", "optim.lr=3e-3", "--set", "optim.min_lr=3e-4", "--set", "schedule.eval_interval=100",
              "--set", "logging.tensorboard=false", "--run-dir", str(root / "sft"))
    return {"root": root, "tok": tok, "held_out": held_out, "sft_stderr": sft.stderr, "shard_tokens": shard_tokens}


def evaluate(work: dict, which: str) -> dict:
    root = work["root"]
    out = run("evaluate", "--checkpoint", str(root / which / "checkpoints"), "--data", str(root / "mc.jsonl"),
              str(root / "heldout"), "--json", "--details")
    return {r["kind"]: r for r in json.loads(out.stdout)["results"]}


@pytest.fixture(scope="module")
def scores(work) -> dict:
    return {which: evaluate(work, which) for which in ("base", "sft")}


def test_sft_run_reports_bad_records_stores_the_template_and_validates(work):
    root = work["root"]
    stderr = work["sft_stderr"]
    assert f"{root / 'chat.jsonl'}:301: no assistant turn" in stderr
    assert f"{root / 'chat.jsonl'}:302: message 0 has no 'role'" in stderr
    assert "600 of 602 records used, 2 rejected" in stderr
    report = json.loads((root / "sft/data_report.json").read_text())[0]
    assert report["rejected"] == 2 and [p["line"] for p in report["problems"]] == [301, 302]
    metrics = [json.loads(line) for line in (root / "sft/metrics.jsonl").read_text().splitlines()]
    val = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(val) == 3 and val[-1] < val[0] < metrics[0]["loss"]
    assert max(m["step"] for m in metrics) == SFT_STEPS
    saved = json.loads((root / "sft/checkpoints" / f"iter_{SFT_STEPS:07d}" / "megatron_llm.json").read_text())
    assert saved["tokenizer"]["path"] == str((root / "sft/tokenizer").resolve())
    manifest = json.loads((root / "sft/tokenizer/megatron_llm_tokenizer.json").read_text())
    assert manifest["chat_template"] == DEFAULT_CHAT_TEMPLATE


def test_sft_answers_held_out_prompts_better(work, scores):
    before, after = scores["base"]["multiple-choice"], scores["sft"]["multiple-choice"]
    assert before["questions"] == after["questions"] == 64 and before["chance"] == 0.25
    # At chance before (a base model's preferences do not depend on which answer is right), well above after.
    assert before["acc"] < 0.42
    # Measured: 0.20 before, 0.50 after 300 steps. At least 29 of 64 right has probability 3e-4 at chance (0.25).
    assert after["acc"] >= 29 / 64 and after["acc"] > before["acc"] + 0.25
    # Perplexity of whole held-out conversations: every token after the first predicted once. (SFT trains on
    # answers only, so the prompts' tokens need not get more likely.)
    for which in ("base", "sft"):
        ppl = scores[which]["perplexity"]
        assert ppl["tokens"] == work["shard_tokens"] - 1 and 1.0 < ppl["perplexity"] < float("inf")


def test_generate_greedy_and_sampled(work):
    root = work["root"]
    questions = [q for q, _, _ in work["held_out"][:6]]
    answers = [a for _, a, _ in work["held_out"][:6]]
    prompts = [arg for q in questions for arg in ("--prompt", q)]
    outputs = {}
    for which in ("base", "sft"):
        out = run("generate", "--checkpoint", str(root / which / "checkpoints"), "--chat", "--json",
                  "--max-new-tokens", "6", *prompts)
        outputs[which] = [json.loads(line) for line in out.stdout.splitlines()]
    eod = work["tok"].eod_id
    # The SFT model answers in the trained form: a short answer, a newline, then end-of-document.
    for item in outputs["sft"]:
        assert item["tokens"][-1] == eod and item["completion"].endswith("\n") and len(item["completion"]) <= 4
    assert not all(item["tokens"][-1] == eod for item in outputs["base"])
    right = sum(item["completion"].strip() == answer for item, answer in zip(outputs["sft"], answers))
    wrong_before = sum(item["completion"].strip() == answer for item, answer in zip(outputs["base"], answers))
    assert right > wrong_before
    sampled = run("generate", "--checkpoint", str(root / "sft/checkpoints"), "--prompt", questions[0], "--chat",
                  "--temperature", "1.5", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", "5", "--json")
    item = json.loads(sampled.stdout)
    assert 1 <= len(item["tokens"]) <= 5 and item["prompt"] == questions[0]


LM_EVAL_TASK = """\
task: synthetic_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def test_exported_model_matches_evaluate_in_transformers_and_lm_eval(work, scores):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = work["root"]
    run("convert", "to-hf", "--checkpoint", str(root / "sft/checkpoints"), "--output", str(root / "hf"),
        "--no-progress")
    mc = scores["sft"]["multiple-choice"]
    questions = [json.loads(line) for line in (root / "mc.jsonl").read_text().splitlines()]
    model = AutoModelForCausalLM.from_pretrained(root / "hf", dtype=torch.float32)
    hf_tok = AutoTokenizer.from_pretrained(root / "hf")
    assert hf_tok.chat_template == DEFAULT_CHAT_TEMPLATE
    for question, item in list(zip(questions, mc["items"]))[:8]:
        # As lm-evaluation-harness splits it: the context's trailing newline belongs to the continuation.
        context_text = question["context"].rstrip()
        context = hf_tok(context_text)["input_ids"]
        for choice, ours in zip(question["choices"], item["logprobs"]):
            whole = hf_tok(question["context"] + choice)["input_ids"]
            assert whole[:len(context)] == context
            with torch.no_grad():
                logits = model(torch.tensor([whole])).logits[0, :-1].double()
            logp = torch.log_softmax(logits, -1)[torch.arange(len(whole) - 1), torch.tensor(whole[1:])]
            assert float(logp[len(context) - 1:].sum()) == pytest.approx(ours, rel=1e-4, abs=1e-4)

    tasks = root / "lm_eval_tasks"
    tasks.mkdir()
    (tasks / "synthetic_mc.yaml").write_text(LM_EVAL_TASK.format(path=root / "mc.jsonl"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", **OFFLINE, "HF_HOME": str(root / "hf_home")}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "lm_eval"), "run", "--model", "hf",
         "--model_args", f"pretrained={root / 'hf'},dtype=float32", "--tasks", "synthetic_mc",
         "--include_path", str(tasks), "--device", "cpu", "--batch_size", "16",
         "--output_path", str(root / "lm_eval_out")],
        cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    reports = list((root / "lm_eval_out").rglob("results_*.json"))
    assert len(reports) == 1
    measured = json.loads(reports[0].read_text())["results"]["synthetic_mc"]
    assert measured["acc,none"] == pytest.approx(mc["acc"])
    assert measured["acc_norm,none"] == pytest.approx(mc["acc_norm"])
