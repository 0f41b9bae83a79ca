"""The logged learning rate equals the closed-form warmup + cosine / linear / constant schedule at every
step, and the logged throughput, TFLOP/s and MFU agree with FLOPs counted by torch itself and the measured
step times.

The closed forms are written here from the definitions (linear warmup from 0 over W steps, then the decay
from lr to min_lr over steps W..D, min_lr after D), not taken from the engine or megatron-core. Weight decay
and Adam's betas are constants in this engine (no schedule), so there is nothing more to compare.
The FLOP reference is torch.utils.flop_counter.FlopCounterMode around one real training step (every matrix
multiply megatron-core runs, forward and backward), not the engine's formula; Megatron-LM's accounting
counts the causal attention products at half, which the test applies to the counted attention FLOPs.
"""

from __future__ import annotations

import json
import math

import pytest

from tests.distributed.ckpt_runs import metrics
from tests.distributed.conftest import torchrun

LR, MIN_LR, WARMUP, DECAY_END, STEPS = 3e-3, 3e-4, 3, 10, 12
SCHEDULES = ("cosine", "linear", "constant")
PEAK_TFLOPS = 0.5
RTOL = 1e-12


def closed_form(step: int, schedule: str, warmup: int = WARMUP) -> float:
    """The learning rate in force after `step` optimizer steps (what is logged at `step`)."""
    if step <= warmup:
        return LR * step / warmup
    if schedule == "constant":
        return LR
    if step >= DECAY_END:
        return MIN_LR
    progress = (step - warmup) / (DECAY_END - warmup)
    fraction = 1 - progress if schedule == "linear" else (1 + math.cos(math.pi * progress)) / 2
    return MIN_LR + fraction * (LR - MIN_LR)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("schedules")
    torchrun(1, "tests/e2e/schedule_worker.py", str(root / "out.json"), str(root), *SCHEDULES)
    return {"root": root, **json.loads((root / "out.json").read_text())}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_logged_learning_rate_is_the_closed_form(runs, schedule):
    logged = {r["step"]: r["lr"] for r in metrics(runs["root"] / schedule) if "lr" in r}
    assert sorted(logged) == list(range(1, STEPS + 1))
    for step, lr in logged.items():
        assert lr == pytest.approx(closed_form(step, schedule), rel=RTOL, abs=1e-18), step
    # Negative control: a warmup one step off (or none at all) moves the first logged rate far off.
    assert abs(closed_form(1, schedule, WARMUP + 1) - logged[1]) > 100 * RTOL * logged[1]
    assert abs(closed_form(1, schedule, 0) - logged[1]) > 100 * RTOL * logged[1]


def counted_flops_per_step(flops: dict[str, int]) -> tuple[float, float]:
    """(Megatron-LM's model FLOPs of one step, the counted attention FLOPs) from torch's counts: matrix
    products of the linear layers in full, the attention's batched products at half (the causal mask)."""
    attention = sum(count for op, count in flops.items() if "bmm" in op)
    dense = sum(count for op, count in flops.items() if "bmm" not in op)
    return dense + attention / 2, attention


def test_throughput_tflops_and_mfu_match_counted_flops_and_step_times(runs):
    records = [r for r in metrics(runs["root"] / "cosine") if "tokens_per_s" in r]
    assert len(records) == STEPS
    tokens_per_step = runs["config"]["global_batch_size"] * runs["config"]["seq_length"]
    flops, attention = counted_flops_per_step(runs["flops"])
    assert attention > 0 and flops > 0
    for r in records:
        # tflops / tokens_per_s is the engine's FLOPs per token (one process, so per device).
        assert r["tflops_per_device"] * 1e12 / r["tokens_per_s"] == pytest.approx(flops / tokens_per_step, rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tflops_per_device"] / PEAK_TFLOPS, rel=1e-12)
    # The logged rate's time base is the measured step time: from step 2 on, the sum of the logged per-step
    # times equals the time between the first and the last step's end (each step is logged).
    logged_seconds = sum(tokens_per_step / r["tokens_per_s"] for r in records[1:])
    ends = runs["step_ends"]["cosine"]
    assert logged_seconds == pytest.approx(ends[-1] - ends[0], rel=0.1)
    # Negative controls: counting the attention in full, or leaving the logits layer out (its FLOPs are
    # 6 x hidden x padded vocabulary per token), moves FLOPs per token far beyond the tolerance.
    assert abs((flops + attention / 2) / flops - 1) > 100 * 1e-9
    logits = 6 * 64 * 512 * tokens_per_step
    assert abs((flops - logits) / flops - 1) > 100 * 1e-9
