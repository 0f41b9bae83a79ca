"""The logged learning rate equals the closed form of each schedule at every step, and the config decides
the schedule on resume: a wsd run extended by a larger `schedule.train_iters` stays in its stable phase."""

import math

import pytest

from tests.distributed.ckpt_runs import metrics, train

LR, MIN_LR, WARMUP = 3e-3, 3e-4, 2


def closed_form(step: int, schedule: str, decay_iters: int, wsd_iters: int = 0, wsd_style: str = "1-sqrt") -> float:
    """The learning rate in force after `step` optimizer steps (what the trainer logs at `step`)."""
    if step <= WARMUP:
        return LR * step / WARMUP
    if schedule == "constant":
        return LR
    if step > decay_iters:
        return MIN_LR
    if schedule == "wsd":
        start = decay_iters - wsd_iters
        if step <= start:
            return LR
        x = (step - start) / wsd_iters
        coeff = {"1-sqrt": 1 - math.sqrt(x), "linear": 1 - x, "cosine": 0.5 * (1 + math.cos(math.pi * x))}[wsd_style]
        return MIN_LR + coeff * (LR - MIN_LR)
    x = (step - WARMUP) / (decay_iters - WARMUP)
    coeff = {"linear": 1 - x, "cosine": 0.5 * (1 + math.cos(math.pi * x))}[schedule]
    return MIN_LR + coeff * (LR - MIN_LR)


def logged_lr(run_dir) -> dict[int, float]:
    return {r["step"]: r["lr"] for r in metrics(run_dir) if "lr" in r}


COMMON = [f"optim.lr={LR}", f"optim.min_lr={MIN_LR}", f"optim.warmup_iters={WARMUP}", "schedule.global_batch_size=4",
          "schedule.micro_batch_size=2", "data.seq_length=16", "model.num_layers=1"]


@pytest.mark.parametrize("style", ["1-sqrt", "linear", "cosine"])
def test_wsd_follows_its_closed_form(tmp_path, style):
    sets = COMMON + ["schedule.train_iters=12", "optim.lr_schedule=wsd", "optim.wsd.decay_fraction=0.25",
                     f"optim.wsd.decay_style={style}"]
    assert train(tmp_path / "run", sets).returncode == 0
    lrs = logged_lr(tmp_path / "run")
    assert sorted(lrs) == list(range(1, 13))
    for step, lr in lrs.items():
        assert lr == pytest.approx(closed_form(step, "wsd", 12, 3, style), rel=1e-12, abs=1e-15), step
    # The stable phase is really flat, and the decay really ends at min_lr.
    assert lrs[9] == LR and lrs[12] == pytest.approx(MIN_LR, rel=1e-12)


def test_extending_a_wsd_run_on_resume_keeps_it_stable_until_the_new_end(tmp_path):
    run = tmp_path / "run"
    sets = COMMON + ["optim.lr_schedule=wsd", "optim.wsd.decay_iters=4", "checkpoint.save_interval=100"]
    assert train(run, sets + ["schedule.train_iters=12", "schedule.exit_interval=6"]).returncode == 0
    assert max(logged_lr(run)) == 6
    assert train(run, sets + ["schedule.train_iters=20"]).returncode == 0
    lrs = logged_lr(run)
    assert sorted(lrs) == list(range(1, 21))
    for step, lr in lrs.items():
        assert lr == pytest.approx(closed_form(step, "wsd", 20, 4), rel=1e-12, abs=1e-15), step
    # Negative control: had the checkpoint's schedule (12 steps) won, steps 9-12 would be decaying.
    old = [closed_form(step, "wsd", 12, 4) for step in (10, 11, 12)]
    assert all(abs(o - LR) > 1e-2 * LR for o in old) and [lrs[s] for s in (10, 11, 12)] == [LR] * 3
