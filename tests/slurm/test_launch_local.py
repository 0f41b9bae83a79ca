"""`megatron-llm launch` (torchrun on one machine) and the launcher's agreement with the engine's exit codes."""

from __future__ import annotations

import shlex
import subprocess
import sys

from megatron_llm.launch.slurm_command import REQUEUE_EXIT_CODE
from megatron_llm.training import exit_codes as errors
from tests.slurm.slurm_jobs import REPO, TINY, cli


def test_launch_rejects_a_layout_that_does_not_fit_before_starting_workers():
    result = cli("launch", "--nproc-per-node", "3", "--", "train", "--config", str(TINY),
                 "--set", "parallel.pipeline=2")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "parallel.pipeline" in result.stderr
    assert "torch.distributed" not in result.stderr


def test_a_config_error_keeps_exit_2_through_launch_and_plain_torchrun_says_so(tmp_path):
    bad = ("--config", str(TINY), "--set", "optim.warmup_iters=50", "--run-dir", str(tmp_path / "run"))
    result = cli("launch", "--nproc-per-node", "2", "--", "train", *bad)
    assert result.returncode == 2, result.stderr
    assert "optim.warmup_iters=50 must be smaller" in result.stderr and "torch.distributed" not in result.stderr
    # Plain torchrun turns the ranks' exit 2 into its own 1; the error printed once says what to use instead.
    plain = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                            "-m", "megatron_llm", "train", *bad], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert plain.returncode == 1
    assert plain.stderr.count("optim.warmup_iters=50 must be smaller") == 1
    assert "`megatron-llm launch` checks the config before starting torchrun" in plain.stderr


def test_launch_dry_run_prints_the_torchrun_command():
    result = cli("launch", "--nproc-per-node", "4", "--max-restarts", "2", "--dry-run", "--", "train",
                 "--config", str(TINY), "--set", "parallel.tensor=2", "--run-dir", "runs/x")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4", "--max-restarts=2",
        "-m", "megatron_llm", "train", "--config", str(TINY), "--set", "parallel.tensor=2", "--run-dir", "runs/x"]


def test_launch_rejects_commands_that_do_not_run_under_torchrun():
    for command in (["slurm", "status", "x"], ["no-such-command"], []):
        result = cli("launch", "--nproc-per-node", "2", "--", *command)
        assert result.returncode == 2, command
        assert len(result.stderr.strip().splitlines()) == 1


def test_sbatch_template_and_submit_use_the_engines_requeue_exit_code():
    assert REQUEUE_EXIT_CODE == errors.REQUEUE_EXIT_CODE
    template = (REPO / "megatron_llm" / "launch" / "templates" / "pretrain.sbatch").read_text()
    assert f'REQUEUE_EXIT_CODE="${{REQUEUE_EXIT_CODE:-{errors.REQUEUE_EXIT_CODE}}}"' in template
    assert f'NO_RETRY_EXIT_CODES=" 2 {errors.BAD_STEPS_EXIT_CODE} "' in template


def test_launch_on_several_machines_prints_a_c10d_torchrun_and_checks_the_whole_world():
    result = cli("launch", "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "node1:29400",
                 "--nproc-per-node", "2", "--dry-run", "--", "train", "--config", str(TINY),
                 "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2")
    assert result.returncode == 0, result.stderr
    assert shlex.split(result.stdout) == [
        sys.executable, "-m", "torch.distributed.run", "--rdzv-backend=c10d", "--rdzv-endpoint=node1:29400",
        "--nnodes=2", "--node-rank=1", "--nproc-per-node=2", "--max-restarts=0", "-m", "megatron_llm", "train",
        "--config", str(TINY), "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2"]
    # TP=2 x PP=2 fits 2 machines x 2 processes, not 1 machine x 2: the check counts every machine.
    alone = cli("launch", "--nproc-per-node", "2", "--dry-run", "--", "train", "--config", str(TINY),
                "--set", "parallel.tensor=2", "--set", "parallel.pipeline=2")
    assert alone.returncode == 2 and "--nproc-per-node 2" in alone.stderr


def test_launch_on_several_machines_needs_a_node_rank_and_an_endpoint():
    base = ["launch", "--nproc-per-node", "2", "--dry-run"]
    for extra, message in ((["--nnodes", "2", "--rdzv-endpoint", "node1:29400"], "--node-rank"),
                           (["--nnodes", "2", "--node-rank", "2", "--rdzv-endpoint", "node1:29400"], "--node-rank"),
                           (["--nnodes", "2", "--node-rank", "0"], "--rdzv-endpoint"),
                           (["--nnodes", "2", "--node-rank", "0", "--rdzv-endpoint", "node1"], "HOST:PORT"),
                           (["--node-rank", "1"], "--nnodes > 1")):
        result = cli(*base, *extra, "--", "train", "--config", str(TINY))
        assert result.returncode == 2, extra
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
