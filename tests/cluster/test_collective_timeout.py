"""parallel.timeout_minutes reaches the process groups: a collective whose peer never answers fails after
that long (what bounds the hang when a host is lost without its connections being closed)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from tests.slurm.slurm_jobs import REPO


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_collective_with_a_silent_peer_fails_after_parallel_timeout_minutes():
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "GLOO_SOCKET_IFNAME": "lo"}
    ranks = [subprocess.Popen([sys.executable, "tests/cluster/timeout_worker.py", "0.5"], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(2)]
    try:
        out, err = ranks[0].communicate(timeout=300)
    finally:
        ranks[1].stdin.close()
        for rank in ranks:
            try:
                rank.wait(timeout=120)
            except subprocess.TimeoutExpired:
                rank.kill()
                rank.wait()
    assert ranks[0].returncode == 1, err[-3000:]
    # 0.5 minutes = 30000 ms (room for the two ranks to start at different times on a busy machine);
    # the default, 30 minutes, would have been 1800000 ms.
    assert "collective failed" in out and "Timed out waiting 30000ms" in out, out + err[-3000:]
