"""Helpers for tests that launch real multi-process runs with torchrun (gloo on CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def torchrun(nproc: int, script: str, *args: str, timeout: int = 900, env: dict | None = None):
    """Run `script` under torchrun with `nproc` processes; fail with its output when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               script, *args]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        pytest.fail(f"torchrun {script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-6000:]}")
    return result
