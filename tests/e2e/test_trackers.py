"""Experiment trackers, per-layer norms, plain log lines and `runs show` on one short two-process run (DP=2,
distributed optimizer) that is stopped at step 3 and resumed to step 6.

References are other programs' readers: MLflow values read back with MlflowClient from a real `mlflow server`
(SQLite store) on 127.0.0.1, W&B offline run files read with `wandb leet inspect --json` (W&B's own reader),
the config through yaml, parameter norms from the checkpoint through torch's own DCP converter, and the total
gradient norm as megatron-core's optimizer computed it.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.distributed.ckpt_runs import checkpoint_tensors, metrics, train
from tests.local_servers import mlflow_server

# The module fixture launches several training runs: slow when the machine is shared.
pytestmark = pytest.mark.timeout(3600)
EXPERIMENT = "trackers-test"
SETS = ["logging.progress=true", "schedule.train_iters=6", "checkpoint.save_interval=3",
        "parallel.distributed_optimizer=true", "optim.clip_grad=0.0", "logging.norms_interval=3"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    work = tmp_path_factory.mktemp("trackers")
    run = work / "run"
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_DIR", "WANDB_SILENT")}
    os.environ.update({"WANDB_MODE": "offline", "WANDB_DIR": str(work / "wandb"), "WANDB_SILENT": "true"})
    try:
        with mlflow_server(work) as url:
            sets = SETS + [f"logging.mlflow={{tracking_uri: {url}, experiment: {EXPERIMENT}}}",
                           "logging.wandb={mode: offline, project: trackers-test}"]
            first = train(run, sets + ["schedule.exit_interval=3"], nproc=2)
            second = train(run, sets, nproc=2)
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=url)
            experiment = client.get_experiment_by_name(EXPERIMENT)
            runs = client.search_runs([experiment.experiment_id])
            history = {key: {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, key)}
                       for key in runs[0].data.metrics}
            summary = Path(client.download_artifacts(runs[0].info.run_id, "model_summary.txt", str(work))).read_text()
            yield SimpleNamespace(run=run, work=work, first=first, second=second, runs=runs, history=history,
                                  summary=summary, records=metrics(run))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def expected_values(records: list[dict]) -> dict[str, dict[int, float]]:
    """key -> step -> value from metrics.jsonl, the last record of a step winning (a resume repeats none here)."""
    out: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, {})[record["step"]] = float(value)
    return out


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else key
        flat.update(flatten(value, name) if isinstance(value, dict) else {name: value})
    return flat


def test_mlflow_run_has_the_jsonl_values_params_and_continues_after_resume(tracked):
    _ok(tracked.first)
    _ok(tracked.second)
    assert len(tracked.runs) == 1, "the resumed job continues the same MLflow run, and only one rank logs"
    run = tracked.runs[0]
    expected = expected_values(tracked.records)
    assert sorted(expected["loss"]) == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "consumed_samples", "rss_bytes_max", "grad_norm/layers.0"):
        assert tracked.history[key] == expected[key], key
    assert set(tracked.history) - {"checkpoint/saved_step"} == set(expected)
    # Control: the same values one step off do not match.
    shifted = {step + 1: value for step, value in expected["loss"].items()}
    assert tracked.history["loss"] != shifted
    assert run.data.tags["megatron_llm.resumed_at_step"] == "3"
    assert run.info.status == "FINISHED"
    config = flatten(yaml.safe_load((tracked.run / "config.yaml").read_text()))
    params = run.data.params
    assert params["model.num_layers"] == str(config["model.num_layers"]) == "4"
    assert params["logging.mlflow.experiment"] == EXPERIMENT
    assert set(params) == set(config)
    assert "DP=2" in tracked.summary and "distributed optimizer=on" in tracked.summary
    assert tracked.history["checkpoint/saved_step"] == {3: 3.0, 6: 6.0}


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of a .wandb file as W&B's own reader (`wandb leet inspect --json`) prints them."""
    proc = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(run_file)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]


def test_wandb_offline_files_read_back_with_wandbs_reader(tracked):
    _ok(tracked.second)
    run_dirs = sorted((tracked.run / "wandb").glob("offline-run-*"))
    assert len(run_dirs) == 2, run_dirs  # one per launch (not per rank)
    run_id = json.loads((tracked.run / "trackers.json").read_text())["wandb"]
    assert all(d.name.endswith(run_id) for d in run_dirs), "the resumed launch continues the same W&B run"
    logged: dict[int, dict] = {}
    for directory in run_dirs:
        for items in _wandb_history(next(directory.glob("*.wandb"))):
            logged.setdefault(int(items["_step"]), {}).update(items)
    expected = expected_values(tracked.records)
    assert {s: logged[s]["loss"] for s in expected["loss"]} == expected["loss"]
    assert {s: logged[s]["grad_norm"] for s in expected["grad_norm"]} == expected["grad_norm"]
    assert {s: logged[s]["grad_norm/layers.2"] for s in (3, 6)} == expected["grad_norm/layers.2"]
    assert logged[1]["loss"] != logged[2]["loss"], "control: steps differ, so matching by step is meaningful"


def test_layer_group_norms_add_up_to_megatrons_norm_and_the_checkpoint(tracked):
    expected = expected_values(tracked.records)
    groups = sorted(k[len("grad_norm/"):] for k in expected if k.startswith("grad_norm/"))
    assert groups == ["embedding", "final_norm", "layers.0", "layers.1", "layers.2", "layers.3", "output_layer"]
    for step in (3, 6):
        total = math.sqrt(sum(expected[f"grad_norm/{g}"][step] ** 2 for g in groups))
        # Both are float64 sums of the same float32 squares in a different order.
        assert total == pytest.approx(expected["grad_norm"][step], rel=1e-6)
        # Control: counting each data-parallel rank's whole buffer instead of its shard is sqrt(2) off at least.
        assert abs(total * math.sqrt(2) - expected["grad_norm"][step]) > 0.1 * expected["grad_norm"][step]
    tensors = checkpoint_tensors(tracked.run / "checkpoints" / "iter_0000006", tracked.work / "ckpt6.pt")
    layer0 = math.sqrt(sum(float(t[0].double().square().sum()) for k, t in tensors.items()
                           if k.startswith("decoder.layers.")))
    embedding = float(tensors["embedding.word_embeddings.weight"].double().norm())
    # Ours sums each tensor's squares in float32 (a float64 copy of a GPU-sized embedding would not fit); over
    # ~10^5 elements that rounds at ~1e-7 relative, against the float64 reference here.
    assert expected["param_norm/layers.0"][6] == pytest.approx(layer0, rel=1e-6)
    assert expected["param_norm/embedding"][6] == pytest.approx(embedding, rel=1e-6)
    assert abs(expected["param_norm/layers.1"][6] - layer0) > 1e-4 * layer0, "control: another layer's differs"


def test_plain_log_lines_when_stdout_is_not_a_terminal(tracked):
    out = tracked.second.stdout
    assert "\r" not in out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines] == ["step 4/6", "step 5/6", "step 6/6"]
    last = next(r for r in tracked.records if r["step"] == 6 and "loss" in r)
    assert f"loss {last['loss']:.4f}" in lines[-1] and "tokens/s" in lines[-1] and "ETA 0:00:00" in lines[-1]


def test_system_metrics_min_mean_max_over_ranks(tracked):
    for record in (r for r in tracked.records if "loss" in r):
        assert 0 < record["rss_bytes_min"] <= record["rss_bytes_mean"] <= record["rss_bytes_max"]
        assert record["cpu_util_pct_min"] <= record["cpu_util_pct_mean"] <= record["cpu_util_pct_max"]


def test_runs_show_prints_the_summary_and_plots_the_jsonl_curves(tracked, capsys):
    from megatron_llm.cli import main as cli
    from megatron_llm.runs.curves import plot_run

    png = tracked.work / "loss.png"
    assert cli(["runs", "show", str(tracked.run), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    last = next(r for r in reversed(tracked.records) if "loss" in r)
    assert "progress: 6/6 steps (100.0%), 48 samples, 3,072 tokens" in out
    assert f"loss {last['loss']:.4f}" in out and "3 " in out and "6 (latest)" in out
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[2] in (3, 4)
    fig = plot_run(tracked.run, tracked.work / "again.png")
    steps = fig.axes[0].lines[0].get_xydata().tolist()
    assert steps == [[s, v] for s, v in sorted(expected_values(tracked.records)["loss"].items())]
    tokens = fig.axes[1].lines[0].get_xydata()[:, 0].tolist()
    assert tokens == [8 * 64 * s for s in range(1, 7)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_tracker_warns_once_and_never_raises(tmp_path, capsys):
    from megatron_llm.config.schema import MlflowConfig
    from megatron_llm.training.callbacks.mlflow_tracker import MlflowTracker

    tracker = MlflowTracker(MlflowConfig(tracking_uri=f"http://127.0.0.1:{_closed_port()}"))
    tracker.begin(tmp_path, {"a": "1"}, "summary", 0)
    for step in range(1, 4):
        tracker.on_log(None, {"step": step, "loss": 1.0})
    tracker.on_train_end(SimpleNamespace(state=SimpleNamespace(exit_code=0)))
    err = capsys.readouterr().err
    assert err.count("mlflow logging is off") == 1 and tracker.failed


def test_a_validation_error_under_torchrun_prints_once(tmp_path):
    proc = train(tmp_path / "bad", ["optim.warmup_iters=50", "schedule.train_iters=6"], nproc=2)
    assert proc.returncode != 0
    assert proc.stderr.count("optim.warmup_iters=50 must be smaller") == 1, proc.stderr[-3000:]
    assert re.search(r"exitcode\s*:\s*2", proc.stderr), proc.stderr[-2000:]
