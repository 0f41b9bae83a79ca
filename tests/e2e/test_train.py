"""`megatron-llm train` end to end: it learns real text, and its metrics agree across jsonl and TensorBoard."""

import json
import math
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def run_train(run_dir: Path, *overrides: str, nproc: int = 1, timeout: int = 900) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = launcher + ["-m", "megatron_llm", "train", "--config", "examples/configs/tiny.yaml",
                          "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def write_byte_shards(prefix: Path, max_bytes: int) -> int:
    """The Python standard library's source as byte-level documents, via megatron-core's own builder."""
    import torch
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        data = path.read_bytes()
        builder.add_document(torch.tensor(list(data) + [256], dtype=torch.int64), [len(data) + 1])
        total += len(data)
        if total >= max_bytes:
            break
    builder.finalize(str(prefix) + ".idx")
    return total


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tiny_model_learns_real_text(tmp_path):
    prefix = tmp_path / "stdlib_bytes"
    assert write_byte_shards(prefix, 3_000_000) >= 2_000_000
    run_train(tmp_path / "run", "model.vocab_size=257", f"data.paths=[{prefix}]", "data.synthetic=false",
              "data.split=98,2,0", "schedule.train_iters=150", "schedule.eval_interval=50",
              "schedule.eval_iters=4", "optim.warmup_iters=10", "logging.log_interval=10",
              f"data.cache_dir={tmp_path / 'cache'}")
    records = read_records(tmp_path / "run")
    train_losses = [r["loss"] for r in records if "loss" in r]
    val_losses = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(val_losses) == 3
    uniform = math.log(257)  # what the freshly initialised model scores
    assert len(train_losses) == 15 and train_losses[-1] < train_losses[0]
    assert val_losses[-1] < uniform - 2.0, val_losses
    assert val_losses[-1] < val_losses[0], val_losses


def test_metrics_jsonl_and_tensorboard_agree(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    result = run_train(run_dir, "schedule.train_iters=12", "schedule.eval_interval=5", "logging.log_interval=2",
                       "optim.warmup_iters=2", nproc=2)
    assert "parameters per rank" in result.stdout
    records = read_records(run_dir)
    expected_keys = {"step", "consumed_samples", "loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device",
                     "mfu", "mem_bytes"}
    step_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in step_records] == [2, 4, 6, 8, 10, 12]
    for record in step_records:
        assert expected_keys <= set(record)
        assert record["consumed_samples"] == record["step"] * 8
        assert record["mem_bytes"] > 0 and record["tokens_per_s"] > 0 and record["tflops_per_device"] > 0
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [5, 10, 12]

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "tflops_per_device", "mem_bytes"):
        tag = f"train/{key}"
        assert tag in tags
        scalars = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(scalars) == [r["step"] for r in step_records]
        for record in step_records:
            assert scalars[record["step"]] == pytest.approx(record[key], rel=1e-6)
    tb_val = {e.step: e.value for e in events.Scalars("valid/loss")}
    assert tb_val == pytest.approx(val, rel=1e-6)
    config = (run_dir / "config.yaml").read_text()
    assert "train_iters: 12" in config
