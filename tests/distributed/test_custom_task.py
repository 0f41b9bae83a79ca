"""A Task defined outside the package (tests/distributed/copy_task_worker.py, under 60 lines) trains through
the same Trainer: checkpoints and an interrupted-then-resumed run equal to an uninterrupted one bit for bit,
metrics in metrics.jsonl, and a task metric reduced over micro-batches and data-parallel ranks exactly.
The same task then proves the batch-size ramp-up: batch sizes, consumed samples, data position and the
learning rate (counted in samples) follow their closed forms, across a resume inside the ramp in another
parallel layout."""

import json
import math
from pathlib import Path

import pytest
import torch

from tests.distributed.conftest import torchrun
from tests.distributed.copy_task_worker import CopyDataset

WORKER = "tests/distributed/copy_task_worker.py"
GBS, STEPS = 8, 6
COMMON = ["schedule.train_iters=6", f"schedule.global_batch_size={GBS}", "schedule.micro_batch_size=2",
          "optim.warmup_iters=1", "schedule.eval_iters=1", "schedule.eval_interval=3", "logging.progress=false",
          "logging.tensorboard=false", "checkpoint.save_interval=3", "data.synthetic=true"]


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def by_step(rows: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("copy")
    torchrun(2, WORKER, str(root / "straight"), json.dumps(COMMON))
    interrupted = COMMON + ["schedule.exit_interval=3"]
    torchrun(2, WORKER, str(root / "resumed"), json.dumps(interrupted))
    first_half = records(root / "resumed")
    torchrun(2, WORKER, str(root / "resumed"), json.dumps(interrupted))
    return root, first_half


def test_interrupted_run_resumes_bit_identically(runs):
    root, first_half = runs
    assert max(r["step"] for r in first_half) == 3
    assert sorted(p.name for p in (root / "resumed" / "checkpoints").glob("iter_*")) == ["iter_0000003",
                                                                                       "iter_0000006"]
    straight, resumed = records(root / "straight"), records(root / "resumed")
    for key in ("loss", "grad_norm", "val_loss", "target_mean"):
        assert by_step(resumed, key) == by_step(straight, key), key
    losses = by_step(straight, "loss")
    assert len(losses) == STEPS and all(v == v for v in losses.values())


def test_task_metric_is_the_token_weighted_mean_over_the_global_batch(runs):
    """`target_mean` is recorded per micro-batch on each data-parallel rank's loss-holding rank; the logged
    value must be the mean label over every loss-masked token of the step's global batch."""
    root, _ = runs
    logged = by_step(records(root / "straight"), "target_mean")
    dataset = CopyDataset(vocab=512, size=STEPS * GBS, split=0)
    for step in range(1, STEPS + 1):
        samples = [dataset[i] for i in range((step - 1) * GBS, step * GBS)]
        labels = torch.stack([s["labels"] for s in samples]).double()
        masks = torch.stack([s["loss_mask"] for s in samples]).double()
        expected = float((labels * masks).sum() / masks.sum())
        assert logged[step] == pytest.approx(expected, rel=1e-12)
        # Negative control: a mean of per-micro-batch means is a different number for these batches.
        per_micro = [float((labels[i:i + 2] * masks[i:i + 2]).sum() / masks[i:i + 2].sum()) for i in range(0, GBS, 2)]
        assert abs(sum(per_micro) / len(per_micro) - expected) > 1e-3 * expected


def global_batch_stats(start: int, size: int) -> tuple[float, float]:
    """(mean masked label, token checksum) of samples [start, start + size), computed from the dataset."""
    dataset = CopyDataset(vocab=512, size=10_000, split=0)
    samples = [dataset[i] for i in range(start, start + size)]
    labels = torch.stack([s["labels"] for s in samples]).double()
    masks = torch.stack([s["loss_mask"] for s in samples]).double()
    tokens = torch.stack([s["tokens"] for s in samples]).double()
    checksum = float((tokens * torch.arange(1, tokens.shape[1] + 1)).sum())
    return float((labels * masks).sum() / masks.sum()), checksum


RAMP = ["schedule.batch_ramp.start=4", "schedule.batch_ramp.increment=4", "schedule.batch_ramp.samples=8",
        "schedule.eval_interval=null", "schedule.eval_iters=0", "optim.warmup_iters=1", "optim.lr=0.003",
        "optim.min_lr=0.0003"]


@pytest.fixture(scope="module")
def ramp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramp")
    torchrun(2, WORKER, str(root / "straight"), json.dumps(COMMON + RAMP))
    torchrun(2, WORKER, str(root / "moved"), json.dumps(COMMON + RAMP + ["schedule.exit_interval=1"]))
    torchrun(2, WORKER, str(root / "moved"), json.dumps(COMMON + RAMP + ["parallel.tensor=2"]))
    return records(root / "straight"), records(root / "moved")


def test_batch_ramp_follows_megatron_lm_semantics_across_a_resume_in_another_layout(ramp_runs):
    straight, moved = ramp_runs
    # Megatron-LM's --rampup-batch-size 4 4 8: batches of 4 until more than 8 samples are consumed... then 8.
    sizes = [4, 4, 8, 8, 8, 8]
    consumed = [sum(sizes[:k]) for k in range(1, STEPS + 1)]
    for rows in (straight, moved):
        assert by_step(rows, "global_batch_size") == dict(enumerate(sizes, start=1))
        assert by_step(rows, "consumed_samples") == dict(enumerate(consumed, start=1))
        for step in range(1, STEPS + 1):
            mean, checksum = global_batch_stats(consumed[step - 1] - sizes[step - 1], sizes[step - 1])
            assert by_step(rows, "target_mean")[step] == pytest.approx(mean, rel=1e-12)
            assert by_step(rows, "token_checksum")[step] == checksum
            # Warmup over one full batch (8 samples), then cosine to min_lr over 6 x 8 samples, in samples.
            n = consumed[step - 1]
            lr = 0.003 * n / 8 if n <= 8 else 0.0003 + 0.5 * (1 + math.cos(math.pi * (n - 8) / 40)) * 0.0027
            assert by_step(rows, "lr")[step] == pytest.approx(lr, rel=1e-12)
    # The same global batches, in another layout (TP2 instead of DP2) after the resume: close, not bit-equal.
    for step, loss in by_step(straight, "loss").items():
        assert by_step(moved, "loss")[step] == pytest.approx(loss, rel=1e-5)
    # Negative control: one sample off in the data position changes the checksum of every step.
    assert all(global_batch_stats(c - s + 1, s)[1] != global_batch_stats(c - s, s)[1]
               for c, s in zip(consumed, sizes))
