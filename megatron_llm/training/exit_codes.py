"""How a training run ends when it does not finish: the exception and the documented exit codes."""

from __future__ import annotations

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: preempted or out of time, checkpoint saved; a launcher requeues the job
BAD_STEPS_EXIT_CODE = 3  # too many non-finite steps in a row, or a loss spike that rollbacks cannot cure
PEER_LOST_EXIT_CODE = 76  # another rank (or its host) died: a collective failed or timed out; requeue and resume

_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
              "timed out", "NCCL communicator was aborted", "ProcessGroupNCCL's watchdog")


def is_peer_lost(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another rank is gone (gloo and NCCL wordings)."""
    import torch

    return isinstance(error, torch.distributed.DistError) or (
        isinstance(error, RuntimeError) and any(text in str(error) for text in _PEER_LOST))


def exit_peer_lost(error: BaseException, command: str) -> None:
    """Report a lost peer in one line and leave at once with PEER_LOST_EXIT_CODE: tearing down a broken
    communicator can block, so the process ends its helper processes and exits without it."""
    import os
    import sys

    import psutil

    print(f"megatron-llm {command}: a peer rank was lost ({str(error).splitlines()[0][:200]}); exiting with code "
          f"{PEER_LOST_EXIT_CODE} to be requeued from the last checkpoint", file=sys.stderr, flush=True)
    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(PEER_LOST_EXIT_CODE)


class TrainingAborted(RuntimeError):
    """The run cannot continue (e.g. too many non-finite steps in a row); the message says why."""
