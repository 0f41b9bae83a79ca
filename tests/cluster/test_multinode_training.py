"""Training across hosts: SLURM (`slurm submit --nodes 2`) and torchrun's c10d rendezvous without SLURM.

Two hosts of the namespace cluster, 2 processes each: TP=2 inside a host with DP=2 across hosts, and
TP=2 inside a host with PP=2 across hosts. The losses must equal a one-process run on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys

from tests.cluster.jobs import (
    BASE_SETTINGS,
    INTERFACE_ENV,
    ITERS,
    LAYOUTS,
    SETTINGS,
    job_log,
    submit_pretrain,
    train_here,
    wait_final,
)
from tests.cluster.netns_cluster import NamespaceCluster
from tests.slurm.slurm_jobs import REPO, TINY, events, losses

# fp32 on the tiny model: a different reduction order (TP partial sums, the cross-host gradient all-reduce)
# moves the loss by a few 1e-7 at most over these steps.
ATOL = 1e-6


def assert_same_losses(got: dict[int, float], expected: dict[int, float]) -> None:
    assert sorted(got) == list(range(1, ITERS + 1))
    worst = max(abs(got[step] - expected[step]) for step in expected)
    assert worst <= ATOL, f"largest loss difference {worst:.3g} > {ATOL}: {got} vs {expected}"


def test_a_lost_cross_host_reduction_would_be_caught(single_process, tmp_path):
    """Negative control: a replica that trained on its own half of the batch (no gradient all-reduce across
    hosts) logs losses far outside ATOL."""
    half = train_here(tmp_path, [*SETTINGS, "schedule.global_batch_size=4"])
    assert min(abs(half[step] - single_process[step]) for step in range(1, ITERS + 1)) > 100 * ATOL


def test_slurm_tp_in_host_dp_across_hosts_trains_like_one_process(cluster, uninterrupted, single_process):
    run_dir, _ = uninterrupted
    start = events(run_dir)[0]
    assert start["master_host"] == "node1" and start["master"].startswith(cluster.address("node1") + ":")
    assert_same_losses(losses(run_dir), single_process)


def test_slurm_tp_in_host_pp_across_hosts_trains_like_one_process(cluster: NamespaceCluster, single_process,
                                                                 tmp_path):
    run_dir = tmp_path / "run"
    job_id = submit_pretrain(cluster, run_dir, 2, 2, [*SETTINGS, *LAYOUTS["tp2-pp2"]])
    fields = wait_final(cluster, job_id, 600, run_dir / "slurm" / f"slurm-{job_id}.out")
    assert fields["JobState"] == "COMPLETED", job_log(run_dir, job_id)[-4000:]
    assert fields["NodeList"] == "node[1-2]" and fields["NumTasks"] == "4"
    assert_same_losses(losses(run_dir), single_process)


def test_launch_on_two_hosts_without_slurm_trains_like_one_process(cluster: NamespaceCluster, single_process,
                                                                  tmp_path):
    """`megatron-llm launch --nnodes 2 --node-rank R --rdzv-endpoint node1:PORT` on each host (torchrun, c10d)."""
    run_dir = tmp_path / "run"
    workers = []
    for rank, host in enumerate(cluster.names):
        args = [sys.executable, "-m", "megatron_llm", "launch", "--nnodes", "2", "--node-rank", str(rank),
                "--rdzv-endpoint", "node1:29400", "--nproc-per-node", "2", "--", "train", "--config", str(TINY),
                "--run-dir", str(run_dir)]
        for setting in [*BASE_SETTINGS, *SETTINGS, *LAYOUTS["tp2-dp2"]]:
            args += ["--set", setting]
        with open(tmp_path / f"{host}.log", "w") as log:
            workers.append(subprocess.Popen(cluster.on_host(host, args), cwd=REPO, stdout=log,
                                            stderr=subprocess.STDOUT, env={**os.environ, **INTERFACE_ENV}))
    try:
        codes = [process.wait(timeout=600) for process in workers]
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
                process.wait()
    logs = {host: (tmp_path / f"{host}.log").read_text(errors="replace")[-3000:] for host in cluster.names}
    assert codes == [0, 0], logs
    assert_same_losses(losses(run_dir), single_process)
