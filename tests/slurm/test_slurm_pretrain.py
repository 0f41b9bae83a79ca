"""pretrain.sbatch on a real SLURM cluster: a full run, preemption + requeue, a crash + requeue, the limits."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_jobs import (
    REPO,
    TINY,
    cli,
    events,
    job,
    losses,
    metrics,
    signal_pending,
    stopped_tasks,
    tracker,
    wait_final,
    wait_until,
)

ITERS = 20
SAVE_INTERVAL = 10
SETTINGS = [f"schedule.train_iters={ITERS}", f"checkpoint.save_interval={SAVE_INTERVAL}", "logging.progress=false",
            "logging.tensorboard=false", "schedule.eval_iters=0"]


def submit(run_dir: Path, *extra: str, env: dict | None = None) -> str:
    args = ["slurm", "submit", "--config", str(TINY), "--run-dir", str(run_dir), "--nodes", "1",
            "--procs-per-node", "2", *extra]
    for setting in SETTINGS:
        args += ["--set", setting]
    result = cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d+\n", result.stdout), result.stdout
    return result.stdout.strip()


def losses_after(run_dir: Path, step: int) -> dict[int, float]:
    """The losses of steps step+1 .. ITERS (KeyError if one is missing)."""
    logged = losses(run_dir)
    return {s: logged[s] for s in range(step + 1, ITERS + 1)}


def job_log(run_dir: Path, job_id: str) -> str:
    return (run_dir / "slurm" / f"slurm-{job_id}.out").read_text(errors="replace")


def resumed_step(log: str) -> int:
    found = re.findall(r"resumed from \S+ at step (\d+)", log)
    assert len(found) == 1, log[-3000:]
    return int(found[0])


@pytest.fixture(scope="module")
def reference(slurm_cluster, tmp_path_factory) -> tuple[Path, str]:
    """An uninterrupted run: the losses every interrupted run must reproduce."""
    run_dir = tmp_path_factory.mktemp("reference")
    job_id = submit(run_dir)
    fields = wait_final(job_id, 300, run_dir / "slurm" / f"slurm-{job_id}.out")
    assert fields["JobState"] == "COMPLETED", job_log(run_dir, job_id)[-3000:]
    return run_dir, job_id


def test_submit_rejects_layout_that_does_not_fit_before_sbatch(slurm_cluster, tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    result = cli("slurm", "submit", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--nodes", "1",
                 "--procs-per-node", "3", "--set", "parallel.tensor=2")
    assert result.returncode == 2
    assert "parallel.tensor" in result.stderr and "= 3 processes" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    assert after == before
    assert not (tmp_path / "run").exists()


def test_dry_run_prints_the_rendered_script(tmp_path):
    result = cli("slurm", "submit", "--config", str(TINY), "--run-dir", str(tmp_path / "run"), "--nodes", "2",
                 "--gpus-per-node", "4", "--partition", "gpu", "--time", "1:00:00", "--account", "proj",
                 "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2", "--dry-run")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for directive in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu",
                      "--time=1:00:00", "--account=proj", "--requeue", "--open-mode=append", "--signal=USR1@180"):
        assert f"#SBATCH {directive}\n" in script
    assert f"RUN_DIR={tmp_path / 'run'}\n" in script
    assert "TRAIN_ARGS=(--set parallel.tensor=2 --set parallel.pipeline=2)\n" in script
    assert not (tmp_path / "run").exists()
    bash = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert bash.returncode == 0, bash.stderr


def test_pretrain_runs_to_completion_as_two_tasks(reference):
    run_dir, job_id = reference
    assert sorted(losses(run_dir)) == list(range(1, ITERS + 1))
    assert tracker(run_dir) == ITERS
    assert (run_dir / "checkpoints" / f"iter_{ITERS:07d}" / "megatron_llm.json").is_file()
    assert [e["event"] for e in events(run_dir)] == ["start", "finished"]
    assert events(run_dir)[0]["tasks"] == 2
    status = cli("slurm", "status", str(run_dir))
    assert status.returncode == 0, status.stderr
    assert f"job:       {job_id} COMPLETED" in status.stdout
    assert "restarts:  0" in status.stdout
    assert f'"step": {ITERS},' in status.stdout.splitlines()[-1]


def test_preempted_job_saves_requeues_and_resumes_with_the_same_losses(reference, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(run_dir)
    wait_until(lambda: max(losses(run_dir), default=0) >= 2, 240, "two logged steps")
    with stopped_tasks(job_id, 2) as tasks:  # the run cannot finish before the signal arrives
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        wait_until(lambda: all(signal_pending(task, signal.SIGUSR1) for task in tasks), 30, "USR1 to arrive")
    fields = wait_final(job_id, 300, run_dir / "slurm" / f"slurm-{job_id}.out")
    log = job_log(run_dir, job_id)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert int(fields["Restarts"]) == 1
    assert [e["event"] for e in events(run_dir)] == ["start", "preempted", "start", "finished"]
    saved = resumed_step(log)
    assert 2 <= saved < ITERS
    assert re.search(rf"preempted \(SIGUSR1\)[^\n]*: saved step {saved}\b", log)
    assert [record["step"] for record in metrics(run_dir) if "loss" in record] == list(range(1, ITERS + 1))
    assert losses_after(run_dir, saved) == losses_after(reference[0], saved)


def test_crashed_job_is_requeued_and_resumes_from_the_last_checkpoint(reference, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "--max-restarts", "1", env={"EXIT_GRACE_SECONDS": "10"})
    wait_until(lambda: tracker(run_dir) is not None, 240, "the first checkpoint")
    with stopped_tasks(job_id, 2) as tasks:  # the run cannot finish before the kill
        checkpoint = tracker(run_dir)
        tasks[1].kill()
    fields = wait_final(job_id, 300, run_dir / "slurm" / f"slurm-{job_id}.out")
    log = job_log(run_dir, job_id)
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert int(fields["Restarts"]) == 1
    kinds = [e["event"] for e in events(run_dir)]
    assert kinds == ["start", "crashed", "start", "finished"], kinds
    assert events(run_dir)[1]["exit_code"] != 0
    resumed = resumed_step(log)
    assert checkpoint <= resumed < ITERS and resumed % SAVE_INTERVAL == 0
    assert losses_after(run_dir, resumed) == losses_after(reference[0], resumed)


def test_crash_requeues_stop_at_max_restarts(slurm_cluster, tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit(run_dir, "--max-restarts", "1", env={"MEGATRON_LLM": "false"})
    fields = wait_final(job_id, 120)
    assert fields["JobState"] == "FAILED"
    assert int(fields["Restarts"]) == 1
    assert [(e["event"], e.get("exit_code")) for e in events(run_dir)] == [
        ("start", None), ("crashed", 1), ("start", None), ("failed", 1)]
    status = cli("slurm", "status", str(run_dir))
    assert "restarts:  1" in status.stdout and "failed" in status.stdout
    assert job(job_id)["ExitCode"].startswith("1:")


def test_local_launcher_trains_the_same_as_slurm(reference, tmp_path):
    args = ["launch", "--nproc-per-node", "2", "--", "train", "--config", str(TINY), "--run-dir", str(tmp_path)]
    for setting in SETTINGS:
        args += ["--set", setting]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert tracker(tmp_path) == ITERS
    assert losses(tmp_path) == losses(reference[0])


def test_convert_sbatch_exports_the_trained_checkpoint(reference, tmp_path):
    script = REPO / "megatron_llm" / "launch" / "templates" / "convert.sbatch"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--mem=1G", "--cpus-per-task=1", f"--output={tmp_path / 'convert-%j.out'}",
         str(script), "to-hf", "--checkpoint", str(reference[0] / "checkpoints"), "--output", str(tmp_path / "hf"),
         "--no-progress"],
        capture_output=True, text=True, check=True,
        env={**os.environ, "MEGATRON_LLM": f"{sys.executable} -m megatron_llm"})
    job_id = submitted.stdout.strip()
    fields = wait_final(job_id, 240, tmp_path / f"convert-{job_id}.out")
    log = (tmp_path / f"convert-{job_id}.out").read_text()
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert f"(step {ITERS})" in log
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == 4
    assert (tmp_path / "hf" / "model-00001-of-00001.safetensors").stat().st_size > 0
