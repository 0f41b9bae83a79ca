"""Runs under torchrun: trains the tiny model for a few steps in each of several parallel layouts.

argv: OUTPUT_JSON RUN_ROOT LAYOUT_JSON...; each layout is a list of `--set` overrides. Rank 0 writes
{layout_name: {"loss": [...], "grad_norm": [...]}} to OUTPUT_JSON.
"""

import json
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_llm.config import load_config
from megatron_llm.config.validation import validate
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.callbacks import Callback
from megatron_llm.training.setup import build_trainer

COMMON = [
    "schedule.train_iters=5",
    "optim.warmup_iters=2",
    "schedule.eval_iters=0",
    "logging.tensorboard=false",
    "logging.progress=false",
]


class Recorder(Callback):
    def __init__(self) -> None:
        self.loss: list[float] = []
        self.grad_norm: list[float] = []
        self.z_loss: list[float] = []

    def on_step_end(self, trainer, result) -> None:
        self.loss.append(result.loss)
        self.grad_norm.append(result.grad_norm)

    def on_log(self, trainer, record) -> None:
        if "z_loss" in record:
            self.z_loss.append(record["z_loss"])


def main() -> None:
    output, run_root = Path(sys.argv[1]), Path(sys.argv[2])
    results = {}
    for index, raw in enumerate(sys.argv[3:]):
        overrides = json.loads(raw)
        config = load_config(Path(__file__).parents[2] / "examples/configs/tiny.yaml", COMMON + overrides)
        validate(config, torch.distributed.get_world_size() if torch.distributed.is_initialized() else
                 int(__import__("os").environ.get("WORLD_SIZE", "1")), detect_platform())
        recorder = Recorder()
        build_trainer(config, run_root / f"layout{index}", callbacks=[recorder]).fit()
        results[" ".join(overrides) or "single"] = {"loss": recorder.loss, "grad_norm": recorder.grad_norm,
                                                    "z_loss": recorder.z_loss}
        parallel_state.destroy_model_parallel()
    if torch.distributed.get_rank() == 0:
        output.write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
