"""How a training run ends when it does not finish: the exception and the documented exit codes."""

from __future__ import annotations

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: preempted or out of time, checkpoint saved; a launcher requeues the job
BAD_STEPS_EXIT_CODE = 3  # too many non-finite steps in a row, or a loss spike that rollbacks cannot cure


class TrainingAborted(RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps in a row); the message says why."""
