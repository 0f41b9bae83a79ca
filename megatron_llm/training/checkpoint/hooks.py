"""Training-loop hooks that make a run survive: checkpoint saving, resume, preemption, bad steps, spikes.

The loop calls `after_step(trainer, result) -> bool` (True stops it) on each hook and `close(trainer)` at
the end; `resume(trainer, ...)` runs once after `setup`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from megatron_llm.training import faults
from megatron_llm.training.checkpoint.format import read_tracker
from megatron_llm.training.checkpoint.mirror import Mirror
from megatron_llm.training.checkpoint.retention import prune
from megatron_llm.training.checkpoint.save_load import load_checkpoint, save_checkpoint


def checkpoint_root(config: object, run_dir: Path) -> Path:
    return Path(config.checkpoint.dir) if config.checkpoint.dir else Path(run_dir) / "checkpoints"


def _is_rank0() -> bool:
    return torch.distributed.get_rank() == 0


def _say(message: str) -> None:
    if _is_rank0():
        print(message, file=sys.stderr, flush=True)


def train_state_dict(state: object) -> dict:
    return {"step": state.step, "consumed_samples": state.consumed_samples, "skipped_steps": state.skipped_steps,
            "skipped_windows": list(state.skipped_windows)}


def restore_train_state(state: object, saved: dict) -> None:
    state.step = int(saved["step"])
    state.consumed_samples = int(saved["consumed_samples"])
    state.skipped_steps = int(saved.get("skipped_steps", 0))
    state.skipped_windows = list(saved.get("skipped_windows", []))


def resume(trainer: object, resume_from: Path | None = None, finetune: bool = False) -> dict | None:
    """Load the run's latest complete checkpoint, else `resume_from` (weights only with `finetune`).

    A run directory that already has checkpoints always resumes from them, so a requeued fine-tuning job
    continues instead of starting over from its base weights. Returns the loaded metadata, or None.
    """
    config = trainer.config
    root = checkpoint_root(config, trainer.run_dir)
    if read_tracker(root) is not None:
        path, finetune = root, False
    elif resume_from is not None:
        path = Path(resume_from)
    else:
        return None
    info = load_checkpoint(path, trainer.model, trainer.optimizer, trainer.scheduler, finetune=finetune,
                           fallback=config.checkpoint.fallback_on_corruption)
    if "train_state" in info:
        restore_train_state(trainer.state, info["train_state"])
        _say(f"resumed from {info['path']} at step {trainer.state.step} "
             f"({trainer.state.consumed_samples} samples consumed)")
    else:
        _say(f"loaded weights from {info['path']} (step {info.get('step')}); training starts at step 0")
    return info


class CheckpointHook:
    """Saves every `save_interval` steps, at the last step, at `exit_interval`, and on a preemption signal."""

    def __init__(self, trainer: object) -> None:
        c = trainer.config.checkpoint
        self.config = c
        self.root = checkpoint_root(trainer.config, trainer.run_dir)
        self.queue = None
        if c.async_save:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue()
        self.mirror = Mirror(c.mirror_dir, c.keep_last, c.keep_every) if c.mirror_dir and _is_rank0() else None
        self.watcher = faults.PreemptionWatcher(c.exit_signals)
        self.steps_this_run = 0
        self.last_saved: int | None = None

    def _committed(self, directory: Path) -> None:
        if _is_rank0():
            prune(self.root, self.config.keep_last, self.config.keep_every)
            if self.mirror is not None:
                self.mirror.submit(directory)

    def save(self, trainer: object, blocking: bool = False) -> None:
        state = trainer.state
        if self.last_saved == state.step:
            return
        save_checkpoint(self.root, trainer.model, trainer.config, state.step, state.consumed_samples,
                        trainer.optimizer, trainer.scheduler, train_state_dict(state), trainer.train_data,
                        async_queue=self.queue, on_commit=self._committed)
        self.last_saved = state.step
        if blocking:
            self.flush()

    def flush(self) -> None:
        """Wait for pending asynchronous saves to be committed."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)

    def after_step(self, trainer: object, result: object) -> bool:
        self.steps_this_run += 1
        step, c, s = trainer.state.step, self.config, trainer.config.schedule
        faults.maybe_send_signal(step)
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=False)
        preempted = self.watcher.should_stop()
        exiting = bool(s.exit_interval) and self.steps_this_run >= s.exit_interval
        last = step >= trainer.train_iters and bool(c.save_interval)
        if preempted or exiting or last or (c.save_interval and step % c.save_interval == 0):
            self.save(trainer, blocking=bool(preempted) or exiting)
        if preempted:
            self.flush()
            trainer.state.exit_code = faults.REQUEUE_EXIT_CODE
            _say(f"preempted ({preempted.name}): saved step {step}; exiting with code {faults.REQUEUE_EXIT_CODE} "
                 f"to be requeued")
            return True
        return False

    def close(self, trainer: object) -> None:
        self.flush()
        if self.queue is not None:
            self.queue.close()
        if self.mirror is not None:
            self.mirror.close()
        self.watcher.restore()


class BadStepHook:
    """Aborts the run after `schedule.max_skipped_in_a_row` non-finite steps in a row."""

    def __init__(self, trainer: object) -> None:
        self.counter = faults.BadStepCounter(trainer.config.schedule.max_skipped_in_a_row)

    def after_step(self, trainer: object, result: object) -> bool:
        self.counter.update(trainer.state.step, result.skipped, result.loss, result.grad_norm)
        return False


class SpikeGuardHook:
    """On a loss spike, reload the last checkpoint and skip the data trained on since (logged).

    Spikes that persist after `MAX_ROLLBACKS` rollbacks to the same checkpoint are not the data's fault:
    the run stops.
    """

    MAX_ROLLBACKS = 3

    def __init__(self, trainer: object, checkpoints: CheckpointHook, writer: object | None = None) -> None:
        s = trainer.config.schedule
        self.detector = faults.SpikeDetector(s.loss_spike_sigma, s.loss_spike_window)
        self.checkpoints = checkpoints
        self.writer = writer
        self.rollbacks: dict[int, int] = {}

    def after_step(self, trainer: object, result: object) -> bool:
        spike = self.detector.check(trainer.state.step, result.loss)
        if spike is None:
            return False
        self.checkpoints.flush()
        root = self.checkpoints.root
        if read_tracker(root) is None:
            _say(f"loss spike at step {spike.step} ({spike.loss:.4f}, recent mean {spike.mean:.4f} ± {spike.std:.4f})"
                 f": no checkpoint to roll back to; continuing")
            return False
        state = trainer.state
        end = state.consumed_samples
        info = load_checkpoint(root, trainer.model, trainer.optimizer, trainer.scheduler,
                               fallback=trainer.config.checkpoint.fallback_on_corruption)
        saved = info["train_state"]
        self.rollbacks[saved["step"]] = self.rollbacks.get(saved["step"], 0) + 1
        if self.rollbacks[saved["step"]] > self.MAX_ROLLBACKS:
            raise faults.TrainingAborted(
                f"loss spike at step {spike.step} ({spike.loss:.4f}, recent mean {spike.mean:.4f}) persists after "
                f"{self.MAX_ROLLBACKS} rollbacks to step {saved['step']} with fresh data; stopping"
            )
        window = [int(saved["consumed_samples"]), end]
        skipped_steps, windows = state.skipped_steps, list(state.skipped_windows) + [window]
        restore_train_state(state, saved)
        state.consumed_samples, state.skipped_steps, state.skipped_windows = end, skipped_steps, windows
        trainer.data_stale = True
        self.checkpoints.last_saved = state.step
        record = {"step": spike.step, "consumed_samples": end, "spike_loss": spike.loss, "rollback_to": state.step,
                  "skipped_samples": window}
        _say(f"loss spike at step {spike.step}: {spike.loss:.4f} vs recent mean {spike.mean:.4f} ± {spike.std:.4f}; "
             f"rolled back to step {state.step} and skipped samples {window[0]}..{window[1] - 1}")
        if self.writer is not None:
            self.writer.write(record)
        return False


def default_hooks(trainer: object, writer: object | None = None) -> list:
    """Bad-step counting, the optional spike guard, then checkpointing (the spike guard must see a step
    before it can be saved)."""
    checkpoints = CheckpointHook(trainer)
    hooks: list = [BadStepHook(trainer)]
    if trainer.config.schedule.loss_spike_sigma:
        hooks.append(SpikeGuardHook(trainer, checkpoints, writer))
    hooks.append(checkpoints)
    return hooks
