"""The callbacks a run gets from its config, in the order they run after each step: faults are injected
before anyone looks at the step; the guards may roll back or abort; the exit policy decides whether to
stop before the checkpoint saver (which saves before a stop); writers come last."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_llm.config.schema import Config
from megatron_llm.training.callbacks import fault_injection
from megatron_llm.training.callbacks.bad_steps import BadStepGuard
from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.callbacks.checkpointing import CheckpointSaver
from megatron_llm.training.callbacks.exit_policy import ExitPolicy
from megatron_llm.training.callbacks.manual_gc import ManualGC
from megatron_llm.training.callbacks.metrics_jsonl import JsonlMetrics
from megatron_llm.training.callbacks.mirror_checkpoints import MirrorCheckpoints
from megatron_llm.training.callbacks.progress import ProgressBar
from megatron_llm.training.callbacks.spike_guard import SpikeGuard
from megatron_llm.training.callbacks.tensorboard import TensorBoardMetrics
from megatron_llm.training.callbacks.trackers import optional_callbacks


def default_callbacks(config: Config, run_dir: Path) -> list[Callback]:
    s, c, log = config.schedule, config.checkpoint, config.logging
    logging_rank = torch.distributed.get_rank() == 0
    callbacks: list[Callback] = []
    if fault_injection.requested():
        callbacks.append(fault_injection.FaultInjection())
    callbacks.append(BadStepGuard(s.max_skipped_in_a_row))
    if s.loss_spike_sigma:
        callbacks.append(SpikeGuard(s.loss_spike_sigma, s.loss_spike_window))
    callbacks.append(ExitPolicy(s.exit_interval, c.exit_signals, s.exit_duration_minutes))
    callbacks.append(CheckpointSaver(c.save_interval))
    if s.manual_gc_interval:
        callbacks.append(ManualGC(s.manual_gc_interval))
    callbacks += optional_callbacks(config)
    if config.evaluation.tasks:
        from megatron_llm.training.callbacks.periodic_eval import PeriodicEval

        callbacks.append(PeriodicEval(config))
    if logging_rank:
        if c.mirror:
            callbacks.append(MirrorCheckpoints(c.mirror, c.keep_last, c.keep_every))
        callbacks.append(JsonlMetrics(run_dir))
        if log.tensorboard:
            callbacks.append(TensorBoardMetrics(run_dir))
        if log.progress:
            callbacks.append(ProgressBar())
    return callbacks
