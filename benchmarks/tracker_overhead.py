"""Training-step overhead of every tracker on: metrics.jsonl, TensorBoard, W&B (offline) and MLflow (a local
`mlflow server` on 127.0.0.1 with a SQLite store), against none of them, on the tiny model (log_interval=1,
the worst case: every step is logged).

One trainer runs rounds of the same number of steps with the trackers on and off, in ABBA order (off-on,
on-off, ...) so that a drift of the machine's speed cancels within each pair. Wall time runs to the end of a
round's last step (a real run goes on training while the senders work); after an "on" round the trackers'
senders hand over what is still queued (at most one send interval's batch) before the next round starts, so
it never falls into an "off" round, and its CPU time is counted in the "on" round's. CPU time includes the
children (W&B's service process, the MLflow server): what the trackers cost the machine, on any core. Prints
the median step times and the median of the per-pair ratios on/off (target: wall <= 1.02).

    python benchmarks/tracker_overhead.py [--pairs 8] [--steps 40] [--threads N]
        [--trackers jsonl,tensorboard,wandb,mlflow] [--system-metrics] [--norms-interval N] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
TRACKERS = ("jsonl", "tensorboard", "wandb", "mlflow")


class Switch:
    """Callbacks that take part in a round only while `on`; their start and end happen once, outside rounds."""

    def __init__(self, callbacks: list, on: bool) -> None:
        self.callbacks = callbacks
        self.on = on

    def __getattr__(self, phase: str):
        def call(trainer, *args):
            if self.on and phase not in ("on_train_start", "on_train_end"):
                for callback in self.callbacks:
                    getattr(callback, phase)(trainer, *args)
        return call


class StepTimer:
    """The duration of every step but a round's first: from one step's start to the next one's, so it covers
    the step, its record and every callback."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.durations: list[float] = []

    def on_step_start(self, trainer) -> None:
        now = time.perf_counter()
        if self.last is not None:
            self.durations.append(now - self.last)
        self.last = now

    def on_train_end(self, trainer) -> None:
        self.last = None

    def __getattr__(self, phase: str):
        return lambda trainer, *args: None


def cpu_seconds() -> float:
    """CPU time of this process and its children (W&B's service process, the MLflow server): what the
    trackers cost the machine, whichever core it ran on."""
    import psutil

    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def run_round(trainer, num_steps: int, switch: Switch, on: bool, timer: StepTimer) -> tuple[float, float, float]:
    """Wall and CPU seconds per step of `num_steps` steps with the switched callbacks on or off, and the
    seconds the senders then took to hand over what was still queued; step durations go to `timer`."""
    from megatron_llm.training.callbacks.tracker_base import TrackerCallback

    switch.on = on
    trainer.train_iters = trainer.state.step + num_steps
    cpu, begin = cpu_seconds(), time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - begin
    timer.on_train_end(trainer)
    if on:
        for callback in switch.callbacks:
            if isinstance(callback, TrackerCallback):
                callback.flush()
    backlog = time.perf_counter() - begin - wall
    return wall / num_steps, (cpu_seconds() - cpu) / num_steps, backlog


def monitored_callbacks(config, run_dir: Path, names: set[str]) -> list:
    """The writers `default_callbacks` builds from `config`, keeping those named (plus system metrics and
    layer norms when the config asks for them)."""
    from megatron_llm.training.callbacks.defaults import default_callbacks
    from megatron_llm.training.callbacks.layer_norms import LayerNorms
    from megatron_llm.training.callbacks.metrics_jsonl import JsonlMetrics
    from megatron_llm.training.callbacks.system_metrics import SystemMetrics
    from megatron_llm.training.callbacks.tensorboard import TensorBoardMetrics
    from megatron_llm.training.callbacks.tracker_base import TrackerCallback

    def wanted(callback) -> bool:
        if isinstance(callback, JsonlMetrics):
            return "jsonl" in names
        if isinstance(callback, TensorBoardMetrics):
            return "tensorboard" in names
        if isinstance(callback, TrackerCallback):
            return callback.name in names
        return isinstance(callback, (SystemMetrics, LayerNorms))

    return [c for c in default_callbacks(config, run_dir) if wanted(c)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8, help="off/on pairs of rounds")
    parser.add_argument("--steps", type=int, default=40, help="steps per round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--trackers", default=",".join(TRACKERS), help=f"subset of {','.join(TRACKERS)}")
    parser.add_argument("--system-metrics", action="store_true", help="also sample system metrics when on")
    parser.add_argument("--norms-interval", type=int, default=None, help="also log layer norms when on")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    names = set(args.trackers.split(",")) if args.trackers else set()
    if names - set(TRACKERS):
        parser.error(f"--trackers: unknown {sorted(names - set(TRACKERS))}")

    import torch

    from megatron_llm.config import load_config
    from megatron_llm.training.callbacks.metrics_jsonl import JsonlMetrics
    from megatron_llm.training.setup import build_trainer
    from tests.local_servers import mlflow_server

    if args.threads:
        torch.set_num_threads(args.threads)
    tiny = str(ROOT / "examples/configs/tiny.yaml")
    total = (2 * args.pairs + 2) * args.steps
    base = [f"schedule.train_iters={total}", "schedule.eval_iters=0", "logging.progress=false",
            "logging.log_interval=1", "logging.tensorboard=false", "logging.system_metrics=false", *args.overrides]
    # MLflow 3's server also starts a job runner (GenAI scorers, trace roll-ups) whose idle consumers poll at
    # about half a core in all: not the tracker's cost, and noise on a small machine.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp)) as url:
        os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp})
        run_dir = Path(tmp) / "run"
        trainer = build_trainer(load_config(tiny, base), run_dir)
        monitored = load_config(tiny, base + [
            f"logging.tensorboard={'tensorboard' in names}", f"logging.system_metrics={args.system_metrics}",
            *([f"logging.norms_interval={args.norms_interval}"] if args.norms_interval else []),
            *(["logging.wandb={mode: offline}"] if "wandb" in names else []),
            *([f"logging.mlflow={{tracking_uri: {url}}}"] if "mlflow" in names else [])])
        extra = monitored_callbacks(monitored, run_dir, names)
        # Off means no writer at all: the trainer's own metrics.jsonl writer is one of the trackers measured.
        always = Switch([c for c in trainer.callbacks if not isinstance(c, JsonlMetrics)], on=True)
        switch = Switch(extra, on=False)
        warm_up, timers = StepTimer(), {False: StepTimer(), True: StepTimer()}
        trainer.callbacks = [always, switch, warm_up]
        for callback in always.callbacks + extra:
            callback.on_train_start(trainer)
        for callback in extra:
            getattr(callback, "flush", lambda: None)()  # W&B and MLflow runs are created before timing starts
        run_round(trainer, args.steps, switch, True, warm_up)  # warm-up of both sides
        run_round(trainer, args.steps, switch, False, warm_up)
        off, on = [], []
        for pair in range(args.pairs):
            for state in ((False, True) if pair % 2 == 0 else (True, False)):
                trainer.callbacks[2:] = [timers[state]]
                (on if state else off).append(run_round(trainer, args.steps, switch, state, timers[state]))
        for callback in always.callbacks + extra:
            callback.on_train_end(trainer)
        failed = [f"{c.name}: {c.failed}" for c in extra if getattr(c, "failed", None)]
    described = ", ".join(type(c).__name__ for c in extra) or "nothing"
    print(f"tiny model, log_interval=1, torch threads {torch.get_num_threads()}, "
          f"{args.pairs} pairs of {args.steps}-step rounds (ABBA); on: {described}")
    for i, what in enumerate(("wall", "CPU ")):
        a, b = [x[i] for x in off], [x[i] for x in on]
        ratios = [y / x for x, y in zip(a, b)]
        print(f"{what} ms/step: off {statistics.median(a) * 1e3:8.2f}  on {statistics.median(b) * 1e3:8.2f}  "
              f"ratio on/off: median of pairs {statistics.median(ratios):6.3f} "
              f"(pairs {min(ratios):.3f}..{max(ratios):.3f})")
    step_off, step_on = statistics.median(timers[False].durations), statistics.median(timers[True].durations)
    print(f"step ms (median of every step, robust to other load but blind to rare costs): off {step_off * 1e3:8.2f}"
          f"  on {step_on * 1e3:8.2f}  ratio {step_on / step_off:6.3f}")
    print(f"after an on round the senders took {statistics.median(x[2] for x in on):.2f} s (median) to hand over "
          "what was queued; target: wall ratio <= 1.02")
    if failed:
        print(f"warning: trackers that failed during the run: {failed}")


if __name__ == "__main__":
    main()
