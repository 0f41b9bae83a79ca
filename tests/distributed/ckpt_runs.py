"""Helpers for checkpoint tests: launch `megatron-llm train` (torchrun or one process), read its metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples/configs/tiny.yaml"
QUIET = ["logging.progress=false", "logging.tensorboard=false", "schedule.eval_iters=0"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def train(run_dir: Path, sets: list[str], nproc: int = 1, fault: str | None = None,
          args: tuple = (), timeout: int = 900) -> subprocess.CompletedProcess:
    """Run `megatron-llm train` on tiny.yaml; one process runs without torchrun (exit codes pass through)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("MEGATRON_LLM_FAULT", None)
    if fault:
        env["MEGATRON_LLM_FAULT"] = fault
    if nproc == 1:
        env["MASTER_ADDR"], env["MASTER_PORT"] = "127.0.0.1", str(free_port())
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                if nproc > 1 else [sys.executable])
    overrides = [x for s in QUIET + sets for x in ("--set", s)]
    cmd = launcher + ["-m", "megatron_llm", "train", "--config", str(TINY), "--run-dir", str(run_dir),
                      *overrides, *args]
    # Output goes to files, not pipes: a helper process orphaned by an injected kill must not hold them open.
    logs = Path(run_dir).parent / f"{Path(run_dir).name}.{len(list(Path(run_dir).parent.glob('*.out')))}"
    Path(run_dir).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=err, timeout=timeout).returncode
    return subprocess.CompletedProcess(cmd, code, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text())


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "megatron_llm", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def losses(records: list[dict]) -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run repeats steps it lost)."""
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def checkpoint_tensors(directory: Path, out: Path) -> dict:
    """All tensors of a torch_dist checkpoint, through torch's own converter (no megatron involved)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(directory), str(out))
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
