"""The Trainer: the training loop, from the first step to the last, with its callbacks around each step.

Reading `fit` top to bottom shows a whole step: callbacks hear that it starts, one global batch goes
through megatron-core's pipeline schedule and the optimizer (`step.train_step`), the state advances, the
step's metrics are logged every `log_interval` steps, validation runs every `eval_interval` steps, and
callbacks (guards, exit policy, checkpointing) act on the finished step. What is trained comes from the
Task; everything around the step is a Callback (`callbacks/`); set-up is `setup.build_trainer`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel
from megatron.core.optimizer import MegatronOptimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_llm.config.schema import Config
from megatron_llm.training.batch_schedule import BatchSchedule
from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.checkpoint.checkpointer import Checkpointer
from megatron_llm.training.data import micro_batches
from megatron_llm.training.exit_codes import TrainingAborted
from megatron_llm.training.metrics import MetricBuffer, Reduce, memory_bytes
from megatron_llm.training.step import StepResult, evaluate, train_step
from megatron_llm.training.task import ForwardStep, Task


@dataclass
class TrainState:
    """Where training is: what a checkpoint must hold to resume exactly."""

    step: int = 0
    consumed_samples: int = 0
    skipped_steps: int = 0
    skipped_windows: list[list[int]] = field(default_factory=list)
    exit_code: int = 0

    def to_dict(self) -> dict:
        return {"step": self.step, "consumed_samples": self.consumed_samples, "skipped_steps": self.skipped_steps,
                "skipped_windows": [list(w) for w in self.skipped_windows]}

    def restore(self, saved: dict) -> None:
        self.step = int(saved["step"])
        self.consumed_samples = int(saved["consumed_samples"])
        self.skipped_steps = int(saved.get("skipped_steps", 0))
        self.skipped_windows = [list(w) for w in saved.get("skipped_windows", [])]


@dataclass(eq=False)
class Trainer:
    """Everything one rank holds while training, and the loop."""

    config: Config
    run_dir: Path
    task: Task
    model: list[DistributedDataParallel]
    optimizer: MegatronOptimizer
    scheduler: OptimizerParamScheduler
    train_data: Any
    valid_data: Any | None
    train_iters: int
    batches: BatchSchedule
    flops_per_sample: float
    peak_flops: float | None
    callbacks: list[Callback] = field(default_factory=list)
    state: TrainState = field(default_factory=TrainState)
    stop_reason: str | None = None
    forward_step: ForwardStep = field(init=False)
    checkpointer: Checkpointer = field(init=False)
    metrics: MetricBuffer = field(init=False, default_factory=MetricBuffer)

    def __post_init__(self) -> None:
        self.forward_step = self.task.forward_step
        self.checkpointer = Checkpointer(
            self.config, self.run_dir,
            written=lambda step: self._call("on_checkpoint_written", step),
            committed=lambda step, path: self._call("on_checkpoint_saved", step, path),
        )

    def fit(self) -> TrainState:
        """Step until `train_iters` or until a callback asks to stop; returns the final state."""
        s, state = self.config.schedule, self.state
        self._call("on_train_start")
        self._last_log, self._samples_since_log = time.perf_counter(), 0
        try:
            while state.step < self.train_iters and not self.stop_requested:
                self._call("on_step_start")
                batch_size = self.batches.size_at(state.consumed_samples)
                data = self._iterators(self.train_data, state.consumed_samples, 1, batch_size)
                result = train_step(self.model, self.optimizer, self.scheduler, data,
                                    batch_size // self.batches.per_pass,
                                    self.config.data.seq_length, s.micro_batch_size, batch_size, self.forward_step)
                state.step += 1
                state.consumed_samples += batch_size
                state.skipped_steps += int(result.skipped)
                self._samples_since_log += batch_size
                record = self._step_record(result, batch_size) if self._is_log_step() else None
                if s.eval_interval and state.step % s.eval_interval == 0 and state.step < self.train_iters:
                    record = {**(record or self._position()), "val_loss": self.validate()}
                if record is not None:
                    self.log(record)
                self._call("on_step_end", result)
            if state.step >= self.train_iters and (s.eval_interval or s.eval_iters):
                self.log({**self._position(), "val_loss": self.validate()})
        except TrainingAborted:
            self._call("on_train_end")  # every rank raises it at the same step: callbacks may still communicate
            raise
        self._call("on_train_end")
        return state

    def validate(self) -> float:
        """Mean per-token loss on the same validation batches every time (comparable along a run)."""
        s = self.config.schedule
        iterators = self._iterators(self.valid_data, 0, s.eval_iters)
        val_loss = evaluate(self.model, iterators, self.num_microbatches, self.config.data.seq_length,
                            s.micro_batch_size, s.eval_iters, self.task.forward_step)
        self._call("on_eval_end", val_loss)
        return val_loss

    def rewind(self, step: int | None = None) -> int | None:
        """Reload the checkpoint of `step` (default: the latest) and go on with fresh data: the samples trained
        on since it are skipped and recorded in `state.skipped_windows`. Returns the restored step, or None
        when there is no checkpoint."""
        self.checkpointer.flush()
        if not self.checkpointer.has_checkpoint():
            return None
        end, skipped, windows = self.state.consumed_samples, self.state.skipped_steps, self.state.skipped_windows
        self.checkpointer.load(self, iteration=step)
        window = [self.state.consumed_samples, end]
        self.state.consumed_samples, self.state.skipped_steps = end, skipped
        self.state.skipped_windows = [*windows, window]
        return self.state.step

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Stop after the current step (the checkpoint saver saves first) and exit with `exit_code`."""
        self.stop_reason = reason
        self.state.exit_code = exit_code

    @property
    def stop_requested(self) -> bool:
        return self.stop_reason is not None

    def record_metric(self, name: str, value: float, reduce: Reduce = "mean", count: float = 1.0) -> None:
        """Add a value to the next logged record (reduced over steps since the last log and over ranks)."""
        self.metrics.record(name, value, reduce, count)

    def log(self, record: dict) -> None:
        """Hand a record (`step` and values) to the writers."""
        self._call("on_log", record)

    @property
    def is_logging_rank(self) -> bool:
        return torch.distributed.get_rank() == 0

    @property
    def num_microbatches(self) -> int:
        """Micro-batches per data-parallel rank in a full global batch (validation always uses full ones)."""
        return self.batches.global_batch_size // self.batches.per_pass

    def _call(self, phase: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, phase)(self, *args)

    def _iterators(self, dataset: Any, start_sample: int, num_steps: int, batch_size: int | None = None
                   ) -> list[Iterator]:
        """This rank's micro-batches of `num_steps` global batches from `start_sample`, one iterator per model
        chunk (virtual pipeline stages each consume every micro-batch). Every rank reads the same global
        batch, so what a step trains on depends only on the samples consumed, not on the layout."""
        s = self.config.schedule
        dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
        return [micro_batches(dataset, start_sample, num_steps, batch_size or s.global_batch_size,
                              s.micro_batch_size, dp_rank, dp_size) for _ in self.model]

    def _is_log_step(self) -> bool:
        return self.state.step % self.config.logging.log_interval == 0 or self.state.step == self.train_iters

    def _position(self) -> dict:
        return {"step": self.state.step, "consumed_samples": self.state.consumed_samples}

    def _step_record(self, result: StepResult, batch_size: int) -> dict:
        now = time.perf_counter()
        elapsed = max(now - self._last_log, 1e-9)
        samples, self._last_log, self._samples_since_log = self._samples_since_log, now, 0
        achieved = self.flops_per_sample * samples / elapsed / torch.distributed.get_world_size()
        return {
            **self._position(),
            "loss": result.loss,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": result.grad_norm,
            "tokens_per_s": samples * self.config.data.seq_length / elapsed,
            "tflops_per_device": achieved / 1e12,
            "mfu": achieved / self.peak_flops if self.peak_flops else None,
            "mem_bytes": memory_bytes(),
            "skipped_steps": self.state.skipped_steps,
            **({"global_batch_size": batch_size} if self.config.schedule.batch_ramp else {}),
            **self.task.log_fields(self),
            **self.metrics.reduce(),
        }
