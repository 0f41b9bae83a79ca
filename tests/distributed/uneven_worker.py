"""Runs under torchrun: several training jobs in one launch, each straight or resumed from a checkpoint.

argv: OUTPUT_JSON JOB_JSON...; a job is {"name", "run_dir", "sets": [--set overrides], "resume_from": path or
null, "unseeded_output_layer": bool}. The last flag plants the bug the final-norm reseeding fixes (the output
layer drawn from whatever generator state its chunk left): the negative control of the equivalence test.
Rank 0 writes {name: {"step": [...], "loss": [...], "grad_norm": [...]}} to OUTPUT_JSON.
"""

import json
import os
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

import megatron_llm.model.builder as builder
from megatron_llm.config import load_config
from megatron_llm.config.validation import validate
from megatron_llm.model.norms import RMSNorm
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.callbacks import Callback
from megatron_llm.training.setup import build_trainer

TINY = Path(__file__).parents[2] / "examples/configs/tiny.yaml"
COMMON = ["schedule.eval_iters=0", "logging.tensorboard=false", "logging.progress=false"]


class Recorder(Callback):
    def __init__(self) -> None:
        self.record: dict[str, list] = {"step": [], "loss": [], "grad_norm": []}

    def on_step_end(self, trainer, result) -> None:
        self.record["step"].append(trainer.state.step)
        self.record["loss"].append(result.loss)
        self.record["grad_norm"].append(result.grad_norm)


def run(job: dict) -> dict:
    config = load_config(TINY, COMMON + job["sets"])
    validate(config, int(os.environ["WORLD_SIZE"]), detect_platform())
    recorder = Recorder()
    seeded = builder._seeded_final_norm_class
    if job.get("unseeded_output_layer"):
        builder._seeded_final_norm_class = lambda seed, num_layers: RMSNorm
    try:
        resume = Path(job["resume_from"]) if job.get("resume_from") else None
        build_trainer(config, Path(job["run_dir"]), callbacks=[recorder], resume_from=resume).fit()
    finally:
        builder._seeded_final_norm_class = seeded
        parallel_state.destroy_model_parallel()
    return recorder.record


def main() -> None:
    output = Path(sys.argv[1])
    results = {job["name"]: run(job) for job in map(json.loads, sys.argv[2:])}
    if torch.distributed.get_rank() == 0:
        output.write_text(json.dumps(results))
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
