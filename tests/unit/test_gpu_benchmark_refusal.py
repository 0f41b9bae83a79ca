"""benchmarks/gpu_throughput.py on a machine without CUDA: exit 2 with one clear line, nothing started.

CUDA_VISIBLE_DEVICES is emptied so the refusal is tested on GPU machines too. Controls: --help exits 0 (the
script itself runs), and a missing config gives a different exit-2 message (the refusal is not any error).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_refuses_without_cuda_with_exit_2_and_one_line() -> None:
    result = _run("--config", "examples/configs/llama-8b.yaml", "--gpus", "8")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_throughput: error: no CUDA device"), result.stderr
    assert result.stdout == ""  # no torchrun, no environment printed, no model built


def test_controls_help_runs_and_a_missing_config_is_a_different_error() -> None:
    assert _run("--help").returncode == 0
    missing = _run("--config", "examples/configs/no-such.yaml", "--gpus", "1")
    assert missing.returncode == 2
    assert "no-such.yaml: no such file" in missing.stderr and "CUDA" not in missing.stderr
