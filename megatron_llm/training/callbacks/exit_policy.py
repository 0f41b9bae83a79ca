"""When a run stops before its last step: `schedule.exit_interval` steps in this process, a wall-clock limit
(`schedule.exit_duration_minutes`), or a preemption signal (`checkpoint.exit_signals`). Each saves a
checkpoint first. A signal or the time limit exits with the requeue code; all ranks agree on every step."""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING

import torch

from megatron_llm.errors import UsageError
from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.checkpoint.checkpointer import say
from megatron_llm.training.exit_codes import REQUEUE_EXIT_CODE

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult

_TIME_LIMIT = -1  # the flag value standing for "out of time" in the per-step agreement


def parse_signals(names: list) -> list[signal.Signals]:
    result = []
    for name in names:
        sig = getattr(signal, str(name).upper(), None)
        if not isinstance(sig, signal.Signals):
            raise UsageError(f"checkpoint.exit_signals: unknown signal {name!r}")
        result.append(sig)
    return result


class ExitPolicy(Callback):
    def __init__(self, exit_interval: int | None, exit_signals: list, duration_minutes: float | None = None) -> None:
        self.exit_interval = exit_interval
        self.deadline = time.monotonic() + duration_minutes * 60 if duration_minutes else None
        self.signals = parse_signals(exit_signals)
        self.steps_this_run = 0
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def on_train_start(self, trainer: Trainer) -> None:
        self.steps_this_run = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.signals}

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

    def _agreed_reason(self) -> int:
        """The signal number any rank received, else -1 if any rank is out of time, else 0 (one all-reduce)."""
        mine = int(self.received) if self.received else 0
        late = self.deadline is not None and time.monotonic() >= self.deadline
        flag = torch.tensor([mine, int(late)], dtype=torch.int32)
        if torch.cuda.is_available():
            flag = flag.cuda()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return int(flag[0]) or (_TIME_LIMIT if int(flag[1]) else 0)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        self.steps_this_run += 1
        reason = self._agreed_reason()
        step = trainer.state.step
        if reason > 0:
            name = signal.Signals(reason).name
            trainer.request_stop(f"preempted ({name}) at step {step}", REQUEUE_EXIT_CODE)
        elif reason == _TIME_LIMIT:
            trainer.request_stop(f"schedule.exit_duration_minutes reached at step {step}", REQUEUE_EXIT_CODE)
        elif self.exit_interval and self.steps_this_run >= self.exit_interval:
            trainer.request_stop(f"schedule.exit_interval={self.exit_interval} steps done in this process", 0)

    def on_train_end(self, trainer: Trainer) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}
        if trainer.stop_reason and trainer.state.exit_code == REQUEUE_EXIT_CODE:
            say(f"{trainer.stop_reason}: saved step {trainer.state.step}; exiting with code {REQUEUE_EXIT_CODE} "
                "to be requeued")
