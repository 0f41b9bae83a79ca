"""Staged runs: a web-mix stage at constant LR, then an anneal on another blend decaying linearly to 0.
The stage switches at its step with its own data from its first sample, the learning rate follows the
piecewise closed form, a run resumed inside the second stage is bit-identical to an uninterrupted one, and
`train --from CKPT --stage anneal.yaml` continuing a plain run reproduces the staged run exactly."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from megatron_llm.training.staged_run import StagedDataset
from tests.distributed.ckpt_runs import REPO, metrics, train

LR, GBS, STEPS, SWITCH = 3e-3, 4, 10, 5


def write_shards(prefix: Path, pattern: str, limit: int = 200_000) -> None:
    """Byte-level documents (EOD 256) of the standard library's files matching `pattern`."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(str(prefix) + ".bin", dtype=np.uint16)
    total = 0
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob(pattern)):
        data = path.read_bytes()[:20_000]
        builder.add_document(torch.tensor(list(data) + [256], dtype=torch.int64), [len(data) + 1])
        total += len(data)
        if total >= limit:
            break
    builder.finalize(str(prefix) + ".idx")


def by_step(rows: list[dict], key: str) -> dict:
    return {r["step"]: r[key] for r in rows if key in r}


@pytest.fixture(scope="module")
def setup_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    write_shards(root / "web", "*.py")
    write_shards(root / "hq", "*.txt")
    base = yaml.safe_load((REPO / "examples/configs/tiny.yaml").read_text())
    base["model"].update(vocab_size=257, num_layers=2)
    base["optim"].update(lr=LR, warmup_iters=0)
    base["data"] = {"seq_length": 32, "split": "98,2,0", "cache_dir": str(root / "cache")}
    base["schedule"].update(train_iters=STEPS, global_batch_size=GBS, micro_batch_size=2, eval_iters=1)
    base["logging"] = {"log_interval": 1, "progress": False, "tensorboard": False}
    staged = {**base, "schedule": {**base["schedule"], "stages": [
        {"name": "web", "paths": [str(root / "web")], "lr_schedule": "constant", "lr": LR},
        {"name": "anneal", "start_step": SWITCH, "paths": [str(root / "hq")], "lr_schedule": "linear",
         "lr": LR, "min_lr": 0.0}]}}
    (root / "staged.yaml").write_text(yaml.safe_dump(staged))
    plain = {**base, "data": {**base["data"], "paths": [str(root / "web")]},
             "optim": {**base["optim"], "lr_schedule": "constant"}}
    (root / "plain.yaml").write_text(yaml.safe_dump(plain))
    (root / "anneal.yaml").write_text(yaml.safe_dump(
        {"name": "anneal", "steps": STEPS - SWITCH, "paths": [str(root / "hq")], "lr_schedule": "linear",
         "lr": LR, "min_lr": 0.0}))
    return root


def run(root: Path, name: str, *args: str, sets: tuple = ()) -> list[dict]:
    result = train(root / name, list(sets), args=args)
    assert result.returncode == 0, result.stderr[-3000:]
    return metrics(root / name)


def test_stages_switch_follow_the_piecewise_schedule_and_resume_exactly(setup_runs):
    root = setup_runs
    config = ("--config", str(root / "staged.yaml"))
    straight = run(root, "straight", *config)
    assert by_step(straight, "stage") == {k: "web" if k <= SWITCH else "anneal" for k in range(1, STEPS + 1)}
    for step, lr in by_step(straight, "lr").items():
        n = step * GBS  # samples consumed: the logged rate is the one for the next step's samples
        expected = LR if n < SWITCH * GBS else LR * (1 - (n - SWITCH * GBS) / ((STEPS - SWITCH) * GBS))
        assert lr == pytest.approx(expected, rel=1e-12, abs=1e-18), step
    run(root, "resumed", *config, sets=("schedule.exit_interval=7",))
    resumed = run(root, "resumed", *config)
    for key in ("loss", "grad_norm", "lr", "val_loss"):
        assert by_step(resumed, key) == by_step(straight, key), key
    # The anneal's data is not the web mix's: training on it is a different trajectory from step 6 on.
    web_only = run(root, "web_only", *config, sets=(f"schedule.stages=[{{name: web, paths: [{root / 'web'}]}}]",))
    assert all(by_step(web_only, "loss")[s] == by_step(straight, "loss")[s] for s in range(1, SWITCH + 1))
    assert all(abs(by_step(web_only, "loss")[s] - by_step(straight, "loss")[s]) > 1e-3
               for s in range(SWITCH + 1, STEPS + 1))


def test_a_stage_started_from_another_runs_checkpoint_reproduces_the_staged_run(setup_runs):
    root = setup_runs
    staged = metrics(root / "straight") or run(root, "straight", "--config", str(root / "staged.yaml"))
    run(root, "plain", "--config", str(root / "plain.yaml"),
        sets=(f"schedule.train_iters={SWITCH}", f"checkpoint.save_interval={SWITCH}"))
    continued = run(root, "anneal", "--config", str(root / "plain.yaml"), "--from", str(root / "plain" / "checkpoints"),
                    "--stage", str(root / "anneal.yaml"))
    assert sorted(by_step(continued, "loss")) == list(range(SWITCH + 1, STEPS + 1))
    for key in ("loss", "grad_norm", "lr"):
        expected = {s: v for s, v in by_step(staged, key).items() if s > SWITCH}
        assert by_step(continued, key) == expected, key
    assert set(by_step(continued, "stage").values()) == {"anneal"}


def test_staged_dataset_maps_run_samples_to_each_stage_from_its_first_sample():
    a, b = [("a", i) for i in range(100)], [("b", i) for i in range(50)]
    data = StagedDataset([a, b], [0, 20], ["web", "anneal"])
    assert [data[i] for i in (0, 19, 20, 21, 69)] == [("a", 0), ("a", 19), ("b", 0), ("b", 1), ("b", 49)]
    assert len(data) == 70 and data.stage_of(19) == 0 and data.stage_of(20) == 1
