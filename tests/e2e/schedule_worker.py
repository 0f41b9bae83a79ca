"""Runs under torchrun (one process): trains the tiny model once per learning-rate schedule, noting when each
step ends, then counts with torch's FlopCounterMode the FLOPs one training step really executes.

argv: OUT_JSON ROOT SCHEDULE...; writes {"step_ends": {schedule: [seconds]}, "flops": {op: count},
"config": {...}} and leaves each run's metrics.jsonl in ROOT/SCHEDULE.
"""

import json
import sys
import time
from pathlib import Path

import torch
from megatron.core import parallel_state
from torch.utils.flop_counter import FlopCounterMode

from megatron_llm.config import load_config
from megatron_llm.config.validation import validate
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.callbacks import Callback
from megatron_llm.training.setup import build_trainer

TINY = Path(__file__).parents[2] / "examples/configs/tiny.yaml"
SETS = ["logging.progress=false", "logging.tensorboard=false", "schedule.eval_iters=0",
        "checkpoint.save_interval=null", "model.num_layers=2", "schedule.train_iters=12", "optim.warmup_iters=3",
        "optim.lr_decay_iters=10", "logging.peak_tflops_per_device=0.5"]


class StepEnds(Callback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, trainer, result) -> None:
        self.ends.append(time.perf_counter())


def config_for(schedule: str, extra: list[str] = ()):
    config = load_config(TINY, SETS + [f"optim.lr_schedule={schedule}", *extra])
    validate(config, 1, detect_platform())
    return config


def main() -> None:
    out, root = Path(sys.argv[1]), Path(sys.argv[2])
    step_ends = {}
    for schedule in sys.argv[3:]:
        timer = StepEnds()
        build_trainer(config_for(schedule), root / schedule, callbacks=[timer]).fit()
        parallel_state.destroy_model_parallel()
        step_ends[schedule] = timer.ends
    trainer = build_trainer(config_for("constant", ["schedule.train_iters=1"]), root / "flops")
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.fit()
    flops = {str(op): int(count) for op, count in counter.get_flop_counts()["Global"].items()}
    s = trainer.config.schedule
    out.write_text(json.dumps({"step_ends": step_ends, "flops": flops,
                               "config": {"global_batch_size": s.global_batch_size,
                                          "seq_length": trainer.config.data.seq_length}}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
