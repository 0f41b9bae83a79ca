"""The loss is a mean over tokens of the global batch, whatever the layout: with loss masks that leave very
different numbers of tokens per sample, DP=2 and TP=2 x PP=2 x DP=2 (one sample per micro-batch) train exactly
like one process holding the whole global batch in one micro-batch, to 1e-6 relative in fp32.

Two kinds of real masked data: pre-training shards of 1-3 and 100-200 token documents with `eod_mask_loss`,
and packed SFT on conversations from one short turn to several long ones (loss on assistant tokens only).
One process with micro_batch_size = global_batch_size is the reference because there the per-token mean is
the only possible mean; with one sample per micro-batch, a per-micro-batch mean weighs samples differently.
Each run records the micro-batches' (loss sum, token count); the test shows that the per-micro-batch mean of
the very same numbers differs from the reference by far more than the tolerance (the negative control).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
# Six launches (up to 8 processes each) on 2 cores: more than the default per-test limit on a busy machine.
pytestmark = pytest.mark.timeout(3600)
WORKER = "tests/distributed/loss_recording_worker.py"
RTOL = 1e-6
STEPS = 3
GBS = 8
QUIET = ["logging.progress=false", "logging.tensorboard=false", "checkpoint.save_interval=null",
         f"schedule.train_iters={STEPS}", "optim.warmup_iters=1", f"schedule.global_batch_size={GBS}",
         "schedule.eval_interval=null", "schedule.eval_iters=0"]
LAYOUTS = {
    "single": (1, [f"schedule.micro_batch_size={GBS}"]),
    "dp2": (2, ["schedule.micro_batch_size=1"]),
    "tp2-pp2-dp2": (8, ["schedule.micro_batch_size=1", "parallel.tensor=2", "parallel.pipeline=2",
                        "parallel.distributed_optimizer=true"]),
}


def launch(nproc: int, out: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               WORKER, str(out), *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        pytest.fail(f"{args[0]} x{nproc} failed ({result.returncode}):\n{result.stdout[-2000:]}\n"
                    f"{result.stderr[-5000:]}")


def logged(run_dir: Path, key: str) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in records if key in r]


def micro_batches(out: Path, step: int) -> list[list[float]]:
    """The recorded (sum, count) of `step`'s micro-batches, over the recording ranks (one per data-parallel
    replica, each running GBS / (micro-batch size x DP) micro-batches a step)."""
    per_rank = [json.loads(path.read_text()) for path in sorted(out.parent.glob(f"{out.name}.rank*.json"))]
    per_step = [len(items) // STEPS for items in per_rank]
    assert all(len(items) == STEPS * n for items, n in zip(per_rank, per_step, strict=True))
    return [item for items, n in zip(per_rank, per_step, strict=True) for item in items[(step - 1) * n : step * n]]


def write_shards(prefix: Path, vocab: int = 512) -> None:
    """Random tokens in documents of two kinds, each ended by EOD = vocab - 1 (the trainer's EOD without a
    tokenizer), through megatron-core's own builder: as many tokens in 1-3 token documents (a third of their
    positions are EODs, masked) as in 100-200 token ones, so samples keep from about 40 to all 64 tokens."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(7)
    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for _ in range(1600):
        length = int(rng.integers(100, 200)) if rng.random() < 0.02 else int(rng.integers(1, 4))
        doc = np.append(rng.integers(0, vocab - 1, size=length), vocab - 1)
        builder.add_document(torch.from_numpy(doc.astype(np.int64)), [len(doc)])
    builder.finalize(f"{prefix}.idx")


def chat_records() -> list[dict]:
    """Conversations from one short exchange to several long turns: very different loss-token counts."""
    import random

    rng = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda".split()
    records = []
    for i in range(120):
        turns = 1 if i % 3 else rng.randint(2, 4)
        messages = []
        for _ in range(turns):
            messages.append({"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(1, 4)))})
            answer_words = rng.randint(1, 3) if i % 2 else rng.randint(8, 20)
            messages.append({"role": "assistant", "content": " ".join(rng.choices(words, k=answer_words))})
        records.append({"messages": messages})
    return records


@pytest.fixture(scope="module", params=["pretrain", "sft"])
def runs(request, tmp_path_factory) -> dict:
    """The three layouts' runs of one kind of data (the pre-training ones first: with -x a failure there
    stops before the SFT runs are launched)."""
    from megatron_llm.posttrain import synthetic
    from megatron_llm.posttrain.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplate

    kind = request.param
    root = tmp_path_factory.mktemp(f"loss_avg_{kind}")
    if kind == "pretrain":
        write_shards(root / "docs")
        command = ["train", "--config", "examples/configs/tiny.yaml", "--set", f"data.paths=[{root / 'docs'}]",
                   "--set", "data.eod_mask_loss=true", "--set", "data.split=100,0,0",
                   "--set", f"data.cache_dir={root / 'cache'}"]
    else:
        template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
        records = chat_records()
        tok_dir = synthetic.write_tokenizer(root / "tok", [template.render(r["messages"]) for r in records], 300)
        synthetic.write_jsonl(root / "chat.jsonl", records)
        command = ["sft", "--config", "examples/configs/tiny.yaml", "--data", str(root / "chat.jsonl"),
                   "--set", f"data.tokenizer={tok_dir}", "--set", "data.synthetic=false"]
    for name, (nproc, sets) in LAYOUTS.items():
        args = [*command, "--run-dir", str(root / f"{kind}-{name}")] + [x for s in QUIET + sets for x in ("--set", s)]
        launch(nproc, root / f"{kind}-{name}-mb", *args)
    return {"root": root, "kind": kind}


@pytest.mark.parametrize("layout", ["dp2", "tp2-pp2-dp2"])
def test_masked_loss_is_the_same_per_token_mean_in_every_layout(runs, layout):
    root, kind = runs["root"], runs["kind"]
    reference, parallel = root / f"{kind}-single", root / f"{kind}-{layout}"
    for key in ("loss", "grad_norm"):
        ours, theirs = logged(reference, key), logged(parallel, key)
        assert len(ours) == len(theirs) == STEPS, key
        assert theirs == pytest.approx(ours, rel=RTOL), f"{key} of {kind} at {layout}"

    # The reference is the per-token mean of the global batch (one micro-batch of GBS samples).
    (whole,) = micro_batches(root / f"{kind}-single-mb", 1)
    assert whole[0] / whole[1] == pytest.approx(logged(reference, "loss")[0], rel=1e-7)
    # Negative control: the parallel run's own micro-batches of step 1 give the reference loss as a per-token
    # mean, and something else as a per-micro-batch mean.
    first = micro_batches(root / f"{kind}-{layout}-mb", 1)
    assert len(first) == GBS
    counts = [count for _, count in first]
    assert max(counts) > 1.25 * min(counts), f"the masks must leave very different token counts: {counts}"
    per_token = sum(s for s, _ in first) / sum(counts)
    per_micro_batch = float(np.mean([s / c for s, c in first]))
    assert per_token == pytest.approx(logged(reference, "loss")[0], rel=RTOL)
    assert abs(per_micro_batch - per_token) > 100 * RTOL * per_token
