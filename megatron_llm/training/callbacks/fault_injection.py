"""Test-only fault injection, registered only when `MEGATRON_LLM_FAULT` is set.

`MEGATRON_LLM_FAULT` holds comma-separated faults, each firing once at one step:
- `kill_rank<R>_during_save_step<N>`: rank R SIGKILLs itself (and its helper processes) after writing its
  shards of step N's checkpoint, before the checkpoint is committed;
- `kill_rank<R>_after_commit_step<N>`: the same, just after the tracker moved;
- `signal_rank<R>_<SIGNAME>_step<N>`: rank R sends itself SIGNAME (e.g. SIGUSR1) at the end of step N;
- `nan_loss_step<N>`: the loss of step N (every micro-batch) is NaN;
- `spike_loss_step<N>`: the loss of step N is scaled by 50.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.forward import LOSS_KEY

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult

FAULT_ENV = "MEGATRON_LLM_FAULT"
SPIKE_FACTOR = 50.0

_KILL_RE = re.compile(r"^kill_rank(\d+)_(during_save|after_commit)_step(\d+)$")
_SIGNAL_RE = re.compile(r"^signal_rank(\d+)_(SIG[A-Z0-9]+)_step(\d+)$")
_LOSS_RE = re.compile(r"^(nan|spike)_loss_step(\d+)$")


def requested() -> bool:
    return bool(os.environ.get(FAULT_ENV, "").strip())


def _kill_process_tree() -> None:
    """SIGKILL this rank and its helper processes (checkpoint writers), as a crashed node would lose them."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os.kill(os.getpid(), signal.SIGKILL)


def poisoned(forward_step, kind: str):
    """A forward step whose loss output is NaN or scaled up (gradients follow)."""
    factor = float("nan") if kind == "nan" else SPIKE_FACTOR

    def wrapped(data_iterator, model):
        output, loss_func = forward_step(data_iterator, model)

        def poisoned_loss(output_tensor):
            loss, num_tokens, report = loss_func(output_tensor)
            value = report[LOSS_KEY]
            return loss * factor, num_tokens, {**report, LOSS_KEY: torch.stack([value[0] * factor, value[1]])}

        return output, poisoned_loss

    return wrapped


class FaultInjection(Callback):
    def __init__(self, spec: str | None = None) -> None:
        text = os.environ.get(FAULT_ENV, "") if spec is None else spec
        self.pending = [f.strip() for f in text.split(",") if f.strip()]
        self.rank = torch.distributed.get_rank()

    def _take(self, pattern: re.Pattern, predicate) -> re.Match | None:
        for fault in self.pending:
            match = pattern.match(fault)
            if match and predicate(match):
                self.pending.remove(fault)
                return match
        return None

    def on_step_start(self, trainer: Trainer) -> None:
        step = trainer.state.step + 1
        match = self._take(_LOSS_RE, lambda m: int(m.group(2)) == step)
        if match:
            trainer.forward_step = poisoned(trainer.task.forward_step, match.group(1))

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        trainer.forward_step = trainer.task.forward_step
        step = trainer.state.step
        match = self._take(_SIGNAL_RE, lambda m: int(m.group(1)) == self.rank and int(m.group(3)) == step)
        if match:
            os.kill(os.getpid(), getattr(signal, match.group(2)))

    def _maybe_kill(self, point: str, step: int) -> None:
        if self._take(_KILL_RE, lambda m: (int(m.group(1)), m.group(2), int(m.group(3))) == (self.rank, point, step)):
            _kill_process_tree()

    def on_checkpoint_written(self, trainer: Trainer, step: int) -> None:
        self._maybe_kill("during_save", step)

    def on_checkpoint_saved(self, trainer: Trainer, step: int, path: Path) -> None:
        self._maybe_kill("after_commit", step)
