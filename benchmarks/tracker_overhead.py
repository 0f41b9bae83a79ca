"""Training-step overhead of all monitoring on: W&B (offline), MLflow (a local `mlflow server` on 127.0.0.1),
system metrics and per-layer-group norms, against all of them off. One trainer, alternating
rounds of the same run, median step times; prints the ratio (target <= 1.02 on the tiny model).

    python benchmarks/tracker_overhead.py [--rounds 5] [--steps 20] [--norms-interval 10] [--set key=value ...]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")


class Forward:
    """The monitoring callbacks for one measured round; their start and end happen once, outside the rounds."""

    def __init__(self, callbacks: list) -> None:
        self.callbacks = callbacks
        self.enabled = False

    def __getattr__(self, phase: str):
        def call(trainer, *args):
            if self.enabled and phase not in ("on_train_start", "on_train_end"):
                for callback in self.callbacks:
                    getattr(callback, phase)(trainer, *args)
        return call


def steps(trainer, num_steps: int) -> float:
    trainer.train_iters = trainer.state.step + num_steps
    begin = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - begin) / num_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--norms-interval", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from megatron_llm.config import load_config
    from megatron_llm.training.callbacks.trackers import optional_callbacks
    from megatron_llm.training.setup import build_trainer
    from tests.local_servers import mlflow_server

    total = 2 * args.rounds * args.steps + args.steps
    base = [f"schedule.train_iters={total}", "schedule.eval_iters=0", "logging.progress=false",
            "logging.log_interval=1", "logging.system_metrics=false", *args.overrides]
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp)) as url:
        os.environ.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp})
        trainer = build_trainer(load_config("examples/configs/tiny.yaml", base), Path(tmp) / "run")
        monitored = load_config("examples/configs/tiny.yaml", base + [
            "logging.system_metrics=true", f"logging.norms_interval={args.norms_interval}",
            "logging.wandb={mode: offline}", f"logging.mlflow={{tracking_uri: {url}}}"])
        # Data position is on in both (every run has it); the rest is what `monitored` adds.
        extra = [c for c in optional_callbacks(monitored) if type(c).__name__ != "DataPosition"]
        forward, base = Forward(extra), Forward(trainer.callbacks)
        base.enabled = True
        trainer.callbacks = [base, forward]  # start and end once for the whole benchmark, not once per round
        for callback in base.callbacks + extra:
            callback.on_train_start(trainer)
        steps(trainer, args.steps)  # warm-up
        off, on = [], []
        for _ in range(args.rounds):
            forward.enabled = False
            off.append(steps(trainer, args.steps))
            forward.enabled = True
            on.append(steps(trainer, args.steps))
        for callback in base.callbacks + extra:
            callback.on_train_end(trainer)
        failed = [c.name for c in extra if getattr(c, "failed", None)]
    off_median, on_median = statistics.median(off), statistics.median(on)
    print(f"monitoring off: {off_median * 1e3:8.2f} ms/step (median of {args.rounds} x {args.steps})")
    print(f"monitoring on:  {on_median * 1e3:8.2f} ms/step (W&B offline, MLflow server, system metrics, "
          f"layer norms every {args.norms_interval})")
    print(f"ratio on/off:   {on_median / off_median:8.3f}   (target <= 1.02)")
    if failed:
        print(f"warning: trackers that failed during the run: {failed}")


if __name__ == "__main__":
    main()
