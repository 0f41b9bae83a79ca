"""Failure handling: preemption signals, non-finite steps, loss spikes, and test-only fault injection.

Fault injection (a test boundary): `MEGATRON_LLM_FAULT` holds comma-separated faults, each firing once
at one step:
- `kill_rank<R>_during_save_step<N>`: rank R SIGKILLs itself (and its helper processes) after writing its
  shards of step N's checkpoint, before the checkpoint is committed;
- `kill_rank<R>_after_commit_step<N>`: the same, just after the tracker moved;
- `signal_rank<R>_<SIGNAME>_step<N>`: rank R sends itself SIGNAME (e.g. SIGUSR1) during step N;
- `nan_loss_step<N>`: the loss of step N (every micro-batch) is NaN;
- `spike_loss_step<N>`: the loss of step N is scaled by 50.
"""

from __future__ import annotations

import math
import os
import re
import signal
from collections import deque
from dataclasses import dataclass

import torch

from megatron_llm.errors import UsageError

FAULT_ENV = "MEGATRON_LLM_FAULT"
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: preempted, checkpoint saved; a launcher requeues the job
BAD_STEPS_EXIT_CODE = 3
SPIKE_FACTOR = 50.0

_KILL_RE = re.compile(r"^kill_rank(\d+)_(during_save|after_commit)_step(\d+)$")
_SIGNAL_RE = re.compile(r"^signal_rank(\d+)_(SIG[A-Z0-9]+)_step(\d+)$")
_LOSS_RE = re.compile(r"^(nan|spike)_loss_step(\d+)$")


class TrainingAborted(RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps in a row); the message says why."""


_fired: set[str] = set()


def _faults() -> list[str]:
    """The faults requested that have not fired yet in this process (each fires once)."""
    return [f.strip() for f in os.environ.get(FAULT_ENV, "").split(",") if f.strip() and f.strip() not in _fired]


def maybe_inject(point: str, step: int) -> None:
    """Kill this process at `point` of `step` if MEGATRON_LLM_FAULT asks for it."""
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for fault in _faults():
        match = _KILL_RE.match(fault)
        if match and int(match.group(1)) == rank and match.group(2) == point and int(match.group(3)) == step:
            _kill_process_tree()


def _kill_process_tree() -> None:
    """SIGKILL this rank and its helper processes (checkpoint writers), as a crashed node would lose them."""
    import psutil

    for child in psutil.Process().children(recursive=True):
        child.kill()
    os.kill(os.getpid(), signal.SIGKILL)


def maybe_send_signal(step: int) -> None:
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    for fault in _faults():
        match = _SIGNAL_RE.match(fault)
        if match and int(match.group(1)) == rank and int(match.group(3)) == step:
            _fired.add(fault)
            os.kill(os.getpid(), getattr(signal, match.group(2)))


def loss_fault(step: int) -> str | None:
    """'nan' or 'spike' if the loss of `step` is to be poisoned."""
    for fault in _faults():
        match = _LOSS_RE.match(fault)
        if match and int(match.group(2)) == step:
            _fired.add(fault)
            return match.group(1)
    return None


def poison_forward_step(forward_step_func, kind: str):
    """Wrap a forward step so its loss output is NaN or scaled up (gradients follow)."""
    factor = float("nan") if kind == "nan" else SPIKE_FACTOR

    def wrapped(data_iterator, model):
        output, loss_func = forward_step_func(data_iterator, model)

        def poisoned(output_tensor):
            loss, *rest = loss_func(output_tensor)
            rest = list(rest)
            if rest and isinstance(rest[-1], dict):
                rest[-1] = {k: torch.stack([v[0] * factor, v[1]]) if v.numel() == 2 else v
                            for k, v in rest[-1].items()}
            return (loss * factor, *rest)

        return output, poisoned

    return wrapped


def parse_signals(names: list) -> list[signal.Signals]:
    result = []
    for name in names:
        sig = getattr(signal, str(name).upper(), None)
        if not isinstance(sig, signal.Signals):
            raise UsageError(f"checkpoint.exit_signals: unknown signal {name!r}")
        result.append(sig)
    return result


class PreemptionWatcher:
    """Records that a configured signal arrived; the step finishes, then every rank agrees to stop."""

    def __init__(self, signals: list) -> None:
        self.received: signal.Signals | None = None
        self._previous = {}
        for sig in parse_signals(signals):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum)

    def should_stop(self) -> signal.Signals | None:
        """The signal if any rank got one, on every rank (one all-reduce per step)."""
        flag = torch.tensor([int(self.received) if self.received else 0], dtype=torch.int32)
        if torch.cuda.is_available():
            flag = flag.cuda()
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return signal.Signals(int(flag.item())) if flag.item() else None

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}


class BadStepCounter:
    """Counts skipped (non-finite) steps and aborts after too many in a row."""

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0

    def update(self, step: int, skipped: bool, loss: float, grad_norm: float | None) -> None:
        self.in_a_row = self.in_a_row + 1 if skipped else 0
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise TrainingAborted(
                f"stopping at step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient "
                f"norm (last loss {loss}, grad norm {grad_norm}); limit schedule.max_skipped_in_a_row="
                f"{self.max_in_a_row}. Lower the learning rate or resume from an earlier checkpoint."
            )


@dataclass
class Spike:
    step: int
    loss: float
    mean: float
    std: float


class SpikeDetector:
    """A loss far above its recent running statistics: > mean + sigma * std over the last `window` steps."""

    def __init__(self, sigma: float, window: int, min_history: int | None = None) -> None:
        self.sigma = sigma
        self.window = window
        self.min_history = min_history or max(window // 2, 2)
        self.losses: deque[float] = deque(maxlen=window)

    def check(self, step: int, loss: float) -> Spike | None:
        if not math.isfinite(loss):
            return None
        if len(self.losses) >= self.min_history:
            mean = sum(self.losses) / len(self.losses)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.losses) / len(self.losses))
            if loss > mean + self.sigma * max(std, 1e-3 * abs(mean)):
                return Spike(step, loss, mean, std)
        self.losses.append(loss)
        return None

    def reset(self) -> None:
        self.losses.clear()
