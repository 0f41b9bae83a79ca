"""Test helpers that watch real SLURM jobs and the files a run writes (polling with deadlines, no fixed sleeps)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "megatron_llm"]
TINY = REPO / "examples" / "configs" / "tiny.yaml"
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`megatron-llm ARGS` with this interpreter, from the repository root, `env` added to the environment."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, **(env or {})))


def job(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return dict(token.partition("=")[::2] for token in out.split() if "=" in token)


def job_records(job_id: str) -> list[dict[str, str]]:
    """One dict per line of `scontrol show job -o` (an array job has one per element)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, check=True).stdout
    return [dict(token.partition("=")[::2] for token in line.split() if "=" in token) for line in out.splitlines()]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.25):
    """Poll `predicate` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_final(job_id: str, timeout: float, log: Path | None = None) -> dict[str, str]:
    """The job's fields once it reached a final state (a requeued job passes through PENDING again)."""
    try:
        return wait_until(lambda: (lambda f: f if f.get("JobState") in FINAL_STATES else None)(job(job_id)),
                          timeout, f"job {job_id} to finish")
    except AssertionError as error:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:]) if log and log.exists() else ""
        raise AssertionError(f"{error}; state {job(job_id).get('JobState')}\n{tail}") from None


def metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run may log a step again)."""
    return {record["step"]: record["loss"] for record in metrics(run_dir) if "loss" in record}


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "slurm" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tracker(run_dir: Path) -> int | None:
    path = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def task_process(job_id: str, task: int, conf: str | None = None) -> psutil.Process | None:
    """The process slurmstepd started for one task of a job's step (found by its SLURM environment);
    `conf` names the cluster's slurm.conf (default: this process's SLURM_CONF)."""
    conf = conf or os.environ.get("SLURM_CONF")
    for proc in psutil.process_iter(["name", "ppid"]):
        try:
            if proc.info["name"] == "slurmstepd" or psutil.Process(proc.info["ppid"]).name() != "slurmstepd":
                continue
            env = proc.environ()
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
        if (env.get("SLURM_CONF") == conf and env.get("SLURM_JOB_ID") == job_id
                and env.get("SLURM_PROCID") == str(task) and env.get("SLURM_STEP_ID", "batch") != "batch"):
            return proc
    return None


@contextlib.contextmanager
def stopped_tasks(job_id: str, ntasks: int, conf: str | None = None):
    """SIGSTOP every task of the job's step (so it cannot get further), SIGCONT the survivors on exit."""
    processes = [wait_until(lambda t=task: task_process(job_id, t, conf), 300, f"task {task} of job {job_id}")
                 for task in range(ntasks)]
    for process in processes:
        process.send_signal(signal.SIGSTOP)
    try:
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)


def signal_pending(process: psutil.Process, signum: int) -> bool:
    """Whether `signum` waits to be delivered to the (stopped) process."""
    status = Path(f"/proc/{process.pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines() if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask & (1 << (signum - 1)) for mask in masks)
