"""A rank whose peer dies fails fast with the documented exit code (76) and leaves nothing behind, so a SLURM
job step ends and can requeue."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from megatron_llm.training.exit_codes import PEER_LOST_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_surviving_rank_exits_promptly_when_its_peer_is_killed(tmp_path):
    port = _free_port()
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "megatron_llm", "train", "--config", "examples/configs/tiny.yaml",
               "--run-dir", str(run_dir), "--set", "schedule.train_iters=100000", "--set", "logging.progress=false",
               "--set", "checkpoint.save_interval=3"]
    ranks, logs = [], []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        logs.append(open(tmp_path / f"rank{rank}.err", "w"))
        ranks.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    try:
        metrics = run_dir / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
            assert time.monotonic() < deadline, "training did not start"
            assert ranks[0].poll() is None and ranks[1].poll() is None, "a rank exited early"
            time.sleep(0.2)
        children = psutil.Process(ranks[0].pid).children(recursive=True)
        assert children, "rank 0 should have started megatron's checkpoint writer process"
        # The peer dies as on a lost node: the rank and its own children (megatron's checkpoint writer).
        for process in [psutil.Process(ranks[1].pid), *psutil.Process(ranks[1].pid).children(recursive=True)]:
            process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        ranks[0].wait(timeout=120)
        assert ranks[0].returncode == PEER_LOST_EXIT_CODE
        assert time.monotonic() - killed_at < 120
        err = (tmp_path / "rank0.err").read_text()
        assert "a peer rank was lost" in err and "Traceback" not in err
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"rank 0 left processes behind: {alive}"
        assert (run_dir / "checkpoints" / "latest_checkpointed_iteration.txt").exists()
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
