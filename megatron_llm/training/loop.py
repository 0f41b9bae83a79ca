"""The pre-training loop: set up processes, model, optimizer and data, then step, log and evaluate."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_llm.config.loader import save_config
from megatron_llm.config.schema import Config
from megatron_llm.model.builder import build_model_chunks
from megatron_llm.model.flops import flops_per_step
from megatron_llm.planning import warn_if_not_fitting
from megatron_llm.runtime.distributed import init_distributed, set_seeds
from megatron_llm.runtime.platform import detect_platform
from megatron_llm.training import faults
from megatron_llm.training.checkpoint.hooks import default_hooks, resume
from megatron_llm.training.data import build_datasets, micro_batches, tokenizer_info
from megatron_llm.training.metrics import MetricsWriter, memory_bytes
from megatron_llm.training.optimizer import attach_schedule_hooks, build_optimizer, build_scheduler, wrap_ddp
from megatron_llm.training.progress import Progress, describe_model
from megatron_llm.training.step import evaluate, forward_step, train_step


def train_iterations(config: Config) -> int:
    s = config.schedule
    if s.train_iters is not None:
        return s.train_iters
    return math.ceil(s.train_tokens / (s.global_batch_size * config.data.seq_length))


@dataclass
class TrainState:
    """Where training is: what a checkpoint must hold to resume exactly."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    skipped_windows: list[list[int]] = field(default_factory=list)
    exit_code: int = 0


@dataclass
class Trainer:
    """Everything one rank holds while training."""

    config: Config
    run_dir: Path
    model: list
    optimizer: object
    scheduler: object
    train_data: object
    valid_data: object
    train_iters: int
    flops_per_step: float
    peak_flops: float | None
    state: TrainState = field(default_factory=TrainState)
    forward_step_func: Callable = forward_step
    data_stale: bool = False

    @property
    def dp_rank(self) -> int:
        return parallel_state.get_data_parallel_rank()

    @property
    def dp_size(self) -> int:
        return parallel_state.get_data_parallel_world_size()

    @property
    def num_microbatches(self) -> int:
        s = self.config.schedule
        return s.global_batch_size // (s.micro_batch_size * self.dp_size)

    def iterators(self, dataset: object, start_sample: int, num_steps: int) -> list:
        """One iterator per model chunk (virtual pipeline stages each consume every micro-batch)."""
        s = self.config.schedule
        return [
            micro_batches(dataset, start_sample, num_steps, s.global_batch_size, s.micro_batch_size,
                          self.dp_rank, self.dp_size)
            for _ in self.model
        ]


def is_logging_rank() -> bool:
    return torch.distributed.get_rank() == 0


def setup(config: Config, run_dir: Path, resume_from: Path | None = None, finetune: bool = False) -> Trainer:
    """Build everything one rank needs, then resume from the run's latest checkpoint if there is one
    (or load `resume_from`; weights only with `finetune`)."""
    platform = detect_platform()
    init_distributed(config.parallel)
    set_seeds(config.schedule.seed)
    info = tokenizer_info(config)
    config.model.vocab_size = info.vocab_size
    chunks = build_model_chunks(config, info.vocab_size, platform)
    tconfig = chunks[0].config
    model = wrap_ddp(chunks, tconfig, config)
    optimizer = build_optimizer(model, config)
    iters = train_iterations(config)
    scheduler = build_scheduler(optimizer, config, iters)
    attach_schedule_hooks(tconfig, model, optimizer)
    set_seeds(config.schedule.seed)
    train_data, valid_data = build_datasets(config, iters, info)
    peak = config.logging.peak_tflops_per_device
    summary = describe_model(config, model, info.vocab_size)  # a collective: every rank calls it
    if is_logging_rank():
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        print(summary, flush=True)
        if platform.has_cuda:
            memory = torch.cuda.get_device_properties(0).total_memory
            warning = warn_if_not_fitting(config, torch.distributed.get_world_size(), memory)
            if warning:
                print(warning, file=sys.stderr, flush=True)
    trainer = Trainer(
        config=config,
        run_dir=run_dir,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data=train_data,
        valid_data=valid_data,
        train_iters=iters,
        flops_per_step=flops_per_step(config.model, config.data.seq_length, config.schedule.global_batch_size,
                                      config.parallel.tensor),
        peak_flops=peak * 1e12 if peak else None,
    )
    resume(trainer, resume_from, finetune)
    return trainer


def run_validation(trainer: Trainer) -> float:
    """Loss on the same validation batches every time, so values along a run are comparable."""
    s = trainer.config.schedule
    iterators = trainer.iterators(trainer.valid_data, 0, s.eval_iters)
    return evaluate(trainer.model, iterators, trainer.num_microbatches, trainer.config.data.seq_length,
                    s.micro_batch_size, s.eval_iters, trainer.forward_step_func)


def train(trainer: Trainer, hooks: list | None = None) -> TrainState:
    """Step until `train_iters` (or `schedule.exit_interval` steps in this process); returns the state.

    `hooks` are objects with `after_step(trainer, result) -> bool` (True stops the loop) and optionally
    `close(trainer)`; they run after the built-in checkpoint and fault hooks (`checkpoint_hooks.py`).
    """
    config, state = trainer.config, trainer.state
    s, log = config.schedule, config.logging
    logging_rank = is_logging_rank()
    writer = MetricsWriter(trainer.run_dir, logging_rank, log.tensorboard)
    hooks = default_hooks(trainer, writer) + list(hooks or [])
    progress = Progress(trainer.train_iters, state.step, enabled=logging_rank and log.progress)
    remaining = trainer.train_iters - state.step
    data = trainer.iterators(trainer.train_data, state.consumed_samples, remaining)
    steps_this_run = 0
    tokens_per_step = s.global_batch_size * config.data.seq_length
    world = torch.distributed.get_world_size()
    last_log = time.perf_counter()
    steps_since_log = 0
    try:
        while state.step < trainer.train_iters:
            if trainer.data_stale:
                data = trainer.iterators(trainer.train_data, state.consumed_samples, trainer.train_iters - state.step)
                trainer.data_stale = False
            forward = trainer.forward_step_func
            if poison := faults.loss_fault(state.step + 1):
                forward = faults.poison_forward_step(forward, poison)
            result = train_step(trainer.model, trainer.optimizer, trainer.scheduler, data,
                                trainer.num_microbatches, config.data.seq_length, s.micro_batch_size,
                                s.global_batch_size, forward)
            state.step += 1
            state.consumed_samples += s.global_batch_size
            state.skipped_steps += int(result.skipped)
            steps_this_run += 1
            steps_since_log += 1
            record = None
            if state.step % log.log_interval == 0 or state.step == trainer.train_iters:
                elapsed = max(time.perf_counter() - last_log, 1e-9)
                tokens_per_s = tokens_per_step * steps_since_log / elapsed
                achieved = trainer.flops_per_step * steps_since_log / elapsed / world
                record = {
                    "step": state.step,
                    "consumed_samples": state.consumed_samples,
                    "loss": result.loss,
                    "lr": trainer.optimizer.param_groups[0]["lr"],
                    "grad_norm": result.grad_norm,
                    "tokens_per_s": tokens_per_s,
                    "tflops_per_device": achieved / 1e12,
                    "mfu": achieved / trainer.peak_flops if trainer.peak_flops else None,
                    "mem_bytes": memory_bytes(),
                    "skipped_steps": state.skipped_steps,
                }
                last_log, steps_since_log = time.perf_counter(), 0
            if s.eval_interval and state.step % s.eval_interval == 0 and state.step < trainer.train_iters:
                record = (record or {"step": state.step, "consumed_samples": state.consumed_samples})
                record["val_loss"] = run_validation(trainer)
            if record is not None:
                writer.write(record)
                progress.update(record)
            progress.advance()
            stop = any([hook.after_step(trainer, result) for hook in hooks])
            if stop or (s.exit_interval and steps_this_run >= s.exit_interval):
                break
        if state.step >= trainer.train_iters and (s.eval_interval or s.eval_iters):
            record = {"step": state.step, "consumed_samples": state.consumed_samples,
                      "val_loss": run_validation(trainer)}
            writer.write(record)
            progress.update(record)
        for hook in hooks:
            if hasattr(hook, "close"):
                hook.close(trainer)
    finally:
        progress.close()
        writer.close()
    return state
