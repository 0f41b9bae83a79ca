"""Build a Trainer: processes, model, optimizer, schedule, the task's datasets, callbacks, then resume."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_llm.config.loader import save_config
from megatron_llm.config.schema import Config
from megatron_llm.model.builder import build_model_chunks, uses_te_rng_tracker
from megatron_llm.model.flops import flops_per_step
from megatron_llm.planning import warn_if_not_fitting
from megatron_llm.runtime.distributed import init_distributed, set_seeds
from megatron_llm.runtime.hardware import detect_platform
from megatron_llm.training.batch_schedule import BatchSchedule
from megatron_llm.training.callbacks import Callback, default_callbacks
from megatron_llm.training.callbacks.lock_release import RunLockRelease, acquire_run_lock
from megatron_llm.training.data import tokenizer_info
from megatron_llm.training.loop import Trainer
from megatron_llm.training.optimizer import attach_schedule_hooks, build_optimizer, build_scheduler, wrap_ddp
from megatron_llm.training.summary import describe_model
from megatron_llm.training.task import PretrainTask, Task


def train_iterations(config: Config, batches: BatchSchedule) -> int:
    s = config.schedule
    if s.train_iters is not None:
        return s.train_iters
    return batches.steps_for(math.ceil(s.train_tokens / config.data.seq_length))


def build_trainer(config: Config, run_dir: Path, task: Task | None = None, callbacks: list[Callback] | None = None,
                  resume_from: Path | None = None, finetune: bool = False) -> Trainer:
    """Everything one rank needs to train `task` (default: pre-training), resumed from the run's latest
    checkpoint if there is one, else from `resume_from` (weights only with `finetune`). `callbacks` run after
    the config's own (`callbacks.default_callbacks`)."""
    task = task or PretrainTask()
    platform = detect_platform()
    init_distributed(config.parallel)
    set_seeds(config.schedule.seed, uses_te_rng_tracker(config, platform))
    lock = acquire_run_lock(run_dir)
    info = tokenizer_info(config)
    config.model.vocab_size = info.vocab_size
    chunks = build_model_chunks(config, info.vocab_size, platform)
    tconfig = chunks[0].config
    model = wrap_ddp(chunks, tconfig, config, platform)
    optimizer = build_optimizer(model, config, platform)
    batches = BatchSchedule(config.schedule, parallel_state.get_data_parallel_world_size())
    iters = train_iterations(config, batches)
    scheduler = build_scheduler(optimizer, config, iters)
    attach_schedule_hooks(tconfig, model, optimizer)
    set_seeds(config.schedule.seed, uses_te_rng_tracker(config, platform))
    train_data, valid_data = task.build_datasets(config, iters, info)
    summary = describe_model(config, model, info.vocab_size)  # a collective: every rank calls it
    if torch.distributed.get_rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        print(summary, flush=True)
        if platform.has_cuda:
            memory = torch.cuda.get_device_properties(0).total_memory
            warning = warn_if_not_fitting(config, torch.distributed.get_world_size(), memory)
            if warning:
                print(warning, file=sys.stderr, flush=True)
    peak = config.logging.peak_tflops_per_device
    trainer = Trainer(
        config=config,
        run_dir=run_dir,
        task=task,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        train_data=train_data,
        valid_data=valid_data,
        train_iters=iters,
        batches=batches,
        flops_per_sample=flops_per_step(config.model, config.data.seq_length, 1, config.parallel.tensor),
        peak_flops=peak * 1e12 if peak else None,
        callbacks=default_callbacks(config, run_dir) + list(callbacks or []) + [RunLockRelease(lock)],
    )
    trainer.checkpointer.resume(trainer, resume_from, finetune)
    task.prepare(trainer)
    return trainer
