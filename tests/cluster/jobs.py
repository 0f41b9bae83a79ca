"""Helpers for jobs on a NamespaceCluster: submit, inspect and wait (polling with deadlines, no fixed sleeps)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.cluster.netns_cluster import IFNAME, NamespaceCluster
from tests.slurm.slurm_jobs import FINAL_STATES, REPO, TINY, cli, losses, wait_until

LAUNCHER = f"{sys.executable} -m megatron_llm"
# What the README tells users of a real cluster to set: the interface the hosts reach each other on.
INTERFACE_ENV = {"GLOO_SOCKET_IFNAME": IFNAME, "NCCL_SOCKET_IFNAME": IFNAME}
BASE_SETTINGS = ["logging.progress=false", "logging.tensorboard=false", "schedule.eval_iters=0"]


def job(cluster: NamespaceCluster, job_id: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict; empty when scontrol did not answer (slurmctld busy: ask again)."""
    try:
        result = cluster.run(["scontrol", "show", "job", "-o", job_id], timeout=30)
    except subprocess.TimeoutExpired:
        return {}
    if result.returncode != 0:
        return {}
    return dict(token.partition("=")[::2] for token in result.stdout.split() if "=" in token)


def wait_final(cluster: NamespaceCluster, job_id: str, timeout: float, log: Path | None = None) -> dict[str, str]:
    """The job's fields once it reached a final state (a requeued job passes through PENDING again)."""
    try:
        return wait_until(lambda: (lambda f: f if f.get("JobState") in FINAL_STATES else None)(job(cluster, job_id)),
                          timeout, f"job {job_id} to finish")
    except AssertionError as error:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:]) if log and log.exists() else ""
        raise AssertionError(f"{error}; state {job(cluster, job_id).get('JobState')}\n{tail}") from None


def submit_pretrain(cluster: NamespaceCluster, run_dir: Path, nodes: int, procs_per_node: int, settings: list[str],
                    *extra: str, env: dict | None = None) -> str:
    """`megatron-llm slurm submit` from the cluster's login host (the hub), the interface variables set."""
    args = [sys.executable, "-m", "megatron_llm", "slurm", "submit", "--config", str(TINY), "--run-dir",
            str(run_dir), "--nodes", str(nodes), "--procs-per-node", str(procs_per_node), *extra]
    for setting in [*BASE_SETTINGS, *settings]:
        args += ["--set", setting]
    result = cluster.run(args, cwd=REPO, env={**INTERFACE_ENV, "MEGATRON_LLM": LAUNCHER, **(env or {})}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d+\n", result.stdout), result.stdout
    return result.stdout.strip()


def job_log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "slurm" / f"slurm-{job_id}.out"
    return path.read_text(errors="replace") if path.exists() else ""


ITERS = 6
SAVE_INTERVAL = 2
SETTINGS = [f"schedule.train_iters={ITERS}", "optim.warmup_iters=2", f"checkpoint.save_interval={SAVE_INTERVAL}"]
LAYOUTS = {"tp2-dp2": ["parallel.tensor=2"], "tp2-pp2": ["parallel.tensor=2", "parallel.pipeline=2"]}


def train_here(run_dir: Path, settings: list[str]) -> dict[int, float]:
    """One process on this machine, outside the cluster: the reference."""
    args = ["train", "--config", str(TINY), "--run-dir", str(run_dir)]
    for setting in [*BASE_SETTINGS, *settings]:
        args += ["--set", setting]
    result = cli(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return losses(run_dir)


def resumed_steps(log: str) -> list[int]:
    """The step of every resume the job's log reports, in order."""
    return [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", log)]


def resumed_step(log: str) -> int:
    found = resumed_steps(log)
    assert len(found) == 1, log[-4000:]
    return found[0]
