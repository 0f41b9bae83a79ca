"""Single-process runs of `megatron-llm train` through bad steps, corruption, async saves and a mirror.

- A NaN loss injected at step 3 is skipped, counted, and the run completes.
- A truncated shard is reported by `checkpoint verify`, refused at load with the file named, and with
  `checkpoint.fallback_on_corruption` the run falls back to the previous checkpoint; a loss spike then
  rolls back to the last checkpoint and skips the offending samples.
- Asynchronous saves with a mirror and retention: a run stopped by `schedule.exit_interval` and resumed
  matches a straight run bit for bit, and the mirror holds verified copies under the same retention.
"""

from __future__ import annotations

import math

import pytest

from megatron_llm.training.checkpoint.format import iter_dir, read_tracker, verify_directory
from tests.distributed.ckpt_runs import cli, losses, metrics, train

BASE = ["schedule.train_iters=8", "checkpoint.save_interval=2"]


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "run"
    out = {"run": run, "nan": train(run, BASE, fault="nan_loss_step3")}
    out["nan_metrics"] = metrics(run)
    shard = sorted(iter_dir(run / "checkpoints", 8).glob("*.distcp"))[-1]
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    out["shard"] = shard
    out["verify"] = cli("checkpoint", "verify", str(iter_dir(run / "checkpoints", 8)))
    out["ls"] = cli("checkpoint", "ls", str(run))
    longer = ["schedule.train_iters=10", "optim.lr_decay_iters=8", "checkpoint.save_interval=2",
              "schedule.loss_spike_sigma=6", "schedule.loss_spike_window=4"]
    out["refused"] = train(run, longer)
    out["fallback"] = train(run, longer + ["checkpoint.fallback_on_corruption=true"], fault="spike_loss_step9")
    return out


def test_nan_loss_is_skipped_and_counted(faulty):
    _ok(faulty["nan"])
    records = {r["step"]: r for r in faulty["nan_metrics"] if "loss" in r}
    assert sorted(records) == list(range(1, 9))
    assert records[3]["loss"] is None, "a non-finite loss is logged as null"
    assert [records[s]["skipped_steps"] for s in (2, 3, 4, 8)] == [0, 1, 1, 1]
    assert all(math.isfinite(records[s]["loss"]) for s in (4, 8))


def test_truncated_shard_is_reported_and_refused(faulty):
    verify, shard = faulty["verify"], faulty["shard"]
    assert verify.returncode == 1
    assert shard.name in verify.stdout and "truncated" in verify.stdout
    assert "iter_0000008" in faulty["ls"].stdout and "INCOMPLETE" in faulty["ls"].stdout
    refused = faulty["refused"]
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "refusing to load" in refused.stderr and shard.name in refused.stderr


def test_fallback_then_spike_rollback(faulty):
    proc, run = faulty["fallback"], faulty["run"]
    _ok(proc)
    assert "falling back to" in proc.stdout + proc.stderr and "iter_0000006" in proc.stdout + proc.stderr
    records = metrics(run)
    rollback = [r for r in records if "rollback_to" in r]
    assert len(rollback) == 1 and rollback[0]["step"] == 9 and rollback[0]["rollback_to"] == 8
    assert rollback[0]["skipped_samples"] == [64, 72]
    last = [r for r in records if "loss" in r][-1]
    assert last["step"] == 10 and last["consumed_samples"] == 88
    assert read_tracker(run / "checkpoints") == 10
    assert not verify_directory(iter_dir(run / "checkpoints", 8)), "step 8 was saved again, intact"


def test_async_save_mirror_and_exit_interval_resume(tmp_path):
    mirror = ["checkpoint.async_save=true", "checkpoint.keep_last=1", "checkpoint.keep_every=4"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    _ok(train(straight, BASE))
    first = train(stopped, BASE + mirror + [f"checkpoint.mirror={tmp_path / 'mirror'}",
                                            "schedule.exit_interval=3"])
    _ok(first)
    assert read_tracker(stopped / "checkpoints") == 3
    _ok(train(stopped, BASE + mirror + [f"checkpoint.mirror={tmp_path / 'mirror'}"]))
    assert losses(metrics(stopped)) == losses(metrics(straight))
    for root in (stopped / "checkpoints", tmp_path / "mirror"):
        kept = sorted(p.name for p in root.glob("iter_*"))
        assert kept == ["iter_0000004", "iter_0000008"], (root, kept)
        assert read_tracker(root) == 8
        assert all(not verify_directory(root / name) for name in kept)
    ls = cli("checkpoint", "ls", str(tmp_path / "mirror"))
    assert ls.returncode == 0 and "unverified (latest)" in ls.stdout


def test_finetune_takes_weights_only(faulty, tmp_path):
    start = iter_dir(faulty["run"] / "checkpoints", 6)
    proc = train(tmp_path / "ft", BASE, args=("--resume-from", str(start), "--finetune"))
    _ok(proc)
    assert "loaded weights from" in proc.stderr
    records = [r for r in metrics(tmp_path / "ft") if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 9)) and records[0]["consumed_samples"] == 8
    fresh_first_loss = faulty["nan_metrics"][0]["loss"]
    assert records[0]["loss"] < fresh_first_loss - 0.05, "the first step must start from the trained weights"
