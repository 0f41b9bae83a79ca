"""Exact resume, preemption, a rank killed mid-save, and resharding, at TP=2 PP=2 (2 virtual stages) DP=2
with the distributed optimizer, on CPU with gloo.

One straight run of 8 steps (checkpoints every 2) is the reference. A second run directory is interrupted
twice: SIGUSR1 at step 3 (checkpoint 3, requeue exit code), then rank 1 SIGKILLed while saving step 6
(checkpoint 4 stays the latest); a final restart finishes. Its losses and final weights and optimizer
state must equal the straight run's bit for bit. The straight run's step-4 checkpoint (saved as `model0`,
`model1`) is then resumed at TP=1 PP=2 DP=4 without virtual stages and in one process; their losses must
match within 1e-5 relative.
"""

from __future__ import annotations

import json

import pytest
import torch

from megatron_llm.training.checkpoint.format import METADATA, TRACKER, iter_dir, read_tracker, verify_directory
from megatron_llm.training.exit_codes import REQUEUE_EXIT_CODE
from tests.distributed.ckpt_runs import checkpoint_tensors, losses, metrics, train

BASE = ["parallel.distributed_optimizer=true", "schedule.train_iters=8",
        "checkpoint.save_interval=2"]
TP2_PP2_DP2 = ["parallel.tensor=2", "parallel.pipeline=2", "parallel.virtual_pipeline=2"]
TP1_PP2_DP4 = ["parallel.tensor=1", "parallel.pipeline=2"]


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    straight, resumed = root / "straight", root / "resumed"
    out = {"root": root, "straight": straight, "resumed": resumed}
    _ok(train(straight, BASE + TP2_PP2_DP2, nproc=8))

    out["preempt"] = train(resumed, BASE + TP2_PP2_DP2, nproc=8, fault="signal_rank5_SIGUSR1_step3")
    out["after_preempt"] = {"tracker": read_tracker(resumed / "checkpoints"), "metrics": metrics(resumed)}

    out["kill"] = train(resumed, BASE + TP2_PP2_DP2, nproc=8, fault="kill_rank1_during_save_step6")
    ckpt6 = iter_dir(resumed / "checkpoints", 6)
    out["after_kill"] = {"tracker": read_tracker(resumed / "checkpoints"), "metrics": metrics(resumed),
                         "iter6_metadata": (ckpt6 / METADATA).exists(), "iter6_exists": ckpt6.exists()}

    out["final"] = train(resumed, BASE + TP2_PP2_DP2, nproc=8)
    start = iter_dir(straight / "checkpoints", 4)
    out["reshard8"] = train(root / "reshard8", BASE + TP1_PP2_DP4, nproc=8, args=("--resume-from", str(start)))
    out["reshard1"] = train(root / "reshard1", BASE, nproc=1, args=("--resume-from", str(start)))
    return out


def test_preemption_saves_current_step_and_exits_for_requeue(runs):
    proc, after = runs["preempt"], runs["after_preempt"]
    assert proc.returncode != 0
    assert f"exitcode  : {REQUEUE_EXIT_CODE}" in proc.stderr + proc.stdout or \
        f"exit code {REQUEUE_EXIT_CODE}" in proc.stderr + proc.stdout
    assert "preempted (SIGUSR1" in proc.stderr + proc.stdout
    assert after["tracker"] == 3
    assert [r["step"] for r in after["metrics"]] == [1, 2, 3]
    assert not verify_directory(iter_dir(runs["resumed"] / "checkpoints", 3))


def test_rank_killed_during_save_keeps_previous_checkpoint(runs):
    proc, after = runs["kill"], runs["after_kill"]
    assert proc.returncode != 0
    assert after["tracker"] == 4, "the killed save must not become the latest"
    assert after["iter6_exists"] and not after["iter6_metadata"], "step 6's save was cut short"
    steps_before_kill = [r["step"] for r in after["metrics"]]
    assert steps_before_kill == [1, 2, 3, 4, 5, 6]
    _ok(runs["final"])
    assert "resumed from" in runs["final"].stderr and "iter_0000004" in runs["final"].stderr
    steps_after = [r["step"] for r in metrics(runs["resumed"])][len(steps_before_kill):]
    assert steps_after == [5, 6, 7, 8], "restart must resume from step 4 and lose nothing else"
    assert not verify_directory(iter_dir(runs["resumed"] / "checkpoints", 6))


def test_interrupted_run_matches_straight_run_bit_for_bit(runs, tmp_path):
    _ok(runs["final"])
    straight, resumed = losses(metrics(runs["straight"])), losses(metrics(runs["resumed"]))
    assert sorted(straight) == list(range(1, 9))
    assert resumed == straight
    a = checkpoint_tensors(iter_dir(runs["straight"] / "checkpoints", 8), tmp_path / "a.pt")
    b = checkpoint_tensors(iter_dir(runs["resumed"] / "checkpoints", 8), tmp_path / "b.pt")
    assert sorted(a) == sorted(b)
    assert any(k.startswith("optimizer.state.exp_avg_sq.") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]


@pytest.mark.parametrize("name", ["reshard8", "reshard1"])
def test_resharded_resume_matches_straight_run(runs, name):
    _ok(runs[name])
    run_dir = runs["root"] / name
    meta = json.loads((iter_dir(run_dir / "checkpoints", 8) / METADATA).read_text())
    expected_layout = {"reshard8": (1, 2, 4), "reshard1": (1, 1, 1)}[name]
    assert (meta["layout"]["tensor"], meta["layout"]["pipeline"], meta["layout"]["data"]) == expected_layout
    straight = losses(metrics(runs["straight"]))
    got = losses(metrics(run_dir))
    assert sorted(got) == [5, 6, 7, 8]
    for step, loss in got.items():
        assert loss == pytest.approx(straight[step], rel=1e-5), (step, loss, straight[step])
    assert (run_dir / "checkpoints" / TRACKER).read_text().strip() == "8"


def test_resume_across_a_change_of_vocabulary_padding(tmp_path):
    """TP=2 pads a 300-token vocabulary to 512 rows, TP=1 to 384. The padding is masked out of the loss
    (model/vocab.py), so both layouts train alike, and megatron-core loads the rows the two have in common:
    resuming a TP=2 checkpoint at TP=1 continues the straight TP=1 run."""
    common = ["model.vocab_size=300", "parallel.distributed_optimizer=true", "schedule.train_iters=6",
              "checkpoint.save_interval=2"]
    _ok(train(tmp_path / "straight", common, nproc=2))
    _ok(train(tmp_path / "tp2", common + ["parallel.tensor=2", "schedule.exit_interval=4"], nproc=4))
    start = iter_dir(tmp_path / "tp2" / "checkpoints", 4)
    _ok(train(tmp_path / "tp1", common, nproc=2, args=("--resume-from", str(start))))
    straight, got = losses(metrics(tmp_path / "straight")), losses(metrics(tmp_path / "tp1"))
    assert sorted(got) == [5, 6]
    for step, loss in got.items():
        assert loss == pytest.approx(straight[step], rel=1e-5), (step, loss, straight[step])
