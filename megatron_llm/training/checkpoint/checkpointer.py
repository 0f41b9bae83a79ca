"""A run's checkpoints: save (synchronously or in the background), resume, roll back, retention.

The Trainer owns one Checkpointer; the checkpoint callback decides when to save. Callbacks hear of every
checkpoint twice: when its shards are written (before the commit) and when it is committed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from megatron_llm.training.checkpoint.format import CheckpointError, read_tracker, step_of, write_tracker
from megatron_llm.training.checkpoint.remote_store import Store, fetch, is_remote
from megatron_llm.training.checkpoint.retention import prune
from megatron_llm.training.checkpoint.save_load import load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from megatron_llm.config.schema import Config
    from megatron_llm.training.loop import Trainer


def checkpoint_root(config: Config, run_dir: Path) -> Path:
    return Path(config.checkpoint.dir) if config.checkpoint.dir else Path(run_dir) / "checkpoints"


def say(message: str) -> None:
    """A message on rank 0's stderr."""
    if torch.distributed.get_rank() == 0:
        print(message, file=sys.stderr, flush=True)


class Checkpointer:
    """Saves and loads the trainer's model, optimizer, scheduler, RNG and train state under `root`.

    `written(step)` and `committed(step, path)` are called on every rank around each commit.
    """

    def __init__(self, config: Config, run_dir: Path, written: Callable[[int], None],
                 committed: Callable[[int, Path], None]) -> None:
        self.config = config.checkpoint
        self.root = checkpoint_root(config, run_dir)
        self.run_dir = Path(run_dir)
        self.written = written
        self.committed = committed
        self.last_saved: int | None = None
        self.queue = None

    def has_checkpoint(self) -> bool:
        return read_tracker(self.root) is not None

    def save(self, trainer: Trainer, blocking: bool = False) -> None:
        """Save the trainer's current step (once per step); `blocking` waits for a background save."""
        state = trainer.state
        if self.last_saved == state.step:
            if blocking:
                self.flush()
            return
        step = state.step

        def on_commit(path: Path) -> None:
            if torch.distributed.get_rank() == 0:
                prune(self.root, self.config.keep_last, self.config.keep_every)
            self.committed(step, path)

        if self.config.async_save and self.queue is None:
            from megatron.core.dist_checkpointing.strategies.async_utils import AsyncCallsQueue

            self.queue = AsyncCallsQueue()
        save_checkpoint(self.root, trainer.model, trainer.config, step, state.consumed_samples, trainer.optimizer,
                        trainer.scheduler, state.to_dict(), trainer.train_data, async_queue=self.queue,
                        before_commit=lambda: self.written(step), on_commit=on_commit)
        self.last_saved = step
        if blocking:
            self.flush()

    def poll(self) -> None:
        """Commit background saves whose shards are written (a collective; called once per step)."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=False)

    def flush(self) -> None:
        """Wait for pending background saves to be committed."""
        if self.queue is not None:
            self.queue.maybe_finalize_async_calls(blocking=True)

    def load(self, trainer: Trainer, path: Path | None = None, finetune: bool = False,
             iteration: int | None = None) -> dict:
        """Load `path` (default: this run's checkpoint of `iteration`, else its latest) into the trainer;
        weights only with `finetune`.

        After a weights-only load the optimizer's main parameters (copies, with bf16 or the distributed
        optimizer) are refreshed from the model, or the first step would restore the old weights.
        """
        info = load_checkpoint(path or self.root, trainer.model, trainer.optimizer, trainer.scheduler,
                               iteration=iteration, finetune=finetune,
                               fallback=self.config.fallback_on_corruption)
        if "train_state" in info:
            trainer.state.restore(info["train_state"])
            self.last_saved = trainer.state.step
        else:
            trainer.optimizer.reload_model_params()
        return info

    def resume(self, trainer: Trainer, resume_from: Path | str | None = None, finetune: bool = False) -> dict | None:
        """This run's latest complete checkpoint, else `resume_from` (weights only with `finetune`).

        A run directory that already has checkpoints always resumes from them, so a requeued fine-tuning
        job continues instead of starting over from its base weights. When they are missing or fail
        verification and `checkpoint.mirror` is set, the newest verified mirror copy is downloaded into the
        checkpoint root and loaded. `resume_from` may be a URL (s3://...), downloaded first. Returns the loaded
        metadata, or None.
        """
        info = None
        if self.has_checkpoint():
            try:
                info = self.load(trainer, self.root)
            except CheckpointError as exc:
                if not self.config.mirror:
                    raise
                say(f"{exc}; resuming from the mirror {self.config.mirror}")
        if info is None and self.config.mirror and self._download(self.config.mirror, self.root, optional=True):
            info = self.load(trainer, self.root)
        if info is None and resume_from is not None:
            path = Path(resume_from)
            if is_remote(resume_from):
                path = self._download(str(resume_from), self.run_dir / "downloaded", optional=False)
            info = self.load(trainer, path, finetune)
        if info is None:
            return None
        if "train_state" in info:
            say(f"resumed from {info['path']} at step {trainer.state.step} "
                f"({trainer.state.consumed_samples} samples consumed)")
        else:
            say(f"loaded weights from {info['path']} (step {info.get('step')}); training starts at step 0")
        return info

    def _download(self, location: str, destination: Path, optional: bool) -> Path | None:
        """Rank 0 downloads the newest verified copy at `location` into `destination` (a shared file system, as
        checkpoint roots are); every rank gets its path. With `optional`, None when `location` has no
        checkpoint; a copy that cannot be read or verified raises on every rank."""
        result: list = [None]
        if torch.distributed.get_rank() == 0:
            try:
                store_has = not optional or Store(location).read_tracker() is not None
                if store_has:
                    local = fetch(location, destination)
                    if destination == self.root:
                        write_tracker(self.root, step_of(local))
                    say(f"downloaded {location} step {step_of(local)} into {local}")
                    result = [str(local)]
            except Exception as exc:  # noqa: BLE001 - any storage error must reach every rank, not hang them
                result = [CheckpointError(f"cannot resume from {location}: {type(exc).__name__}: {exc}")]
        torch.distributed.broadcast_object_list(result, src=0)
        if isinstance(result[0], Exception):
            raise result[0]
        return Path(result[0]) if result[0] else None

    def close(self) -> None:
        self.flush()
        if self.queue is not None:
            self.queue.close()
            self.queue = None
