"""Runs a megatron-llm command (under torchrun, or as one process) while recording, on the ranks that hold the
loss, each training micro-batch's (loss sum, token count) as the per-token loss function returns them.

argv: OUT_PREFIX COMMAND ARGS...; each recording rank writes OUT_PREFIX.rankR.json, a list of [sum, count]
in the order the micro-batches ran. The test uses them to show what a per-micro-batch mean would have given.
"""

import json
import os
import sys

import torch

import megatron_llm.training.task as task_module
from megatron_llm.cli import main as cli
from megatron_llm.training.forward import holds_loss

RECORDS: list[list[float]] = []
_token_loss = task_module.token_loss


def recording_token_loss(loss_mask, per_token_loss):
    loss_sum, count, report = _token_loss(loss_mask, per_token_loss)
    if torch.is_grad_enabled() and holds_loss():
        RECORDS.append([float(loss_sum), float(count)])
    return loss_sum, count, report


def main() -> int:
    prefix = sys.argv[1]
    task_module.token_loss = recording_token_loss
    code = cli(sys.argv[2:])
    if RECORDS:
        with open(f"{prefix}.rank{os.environ.get('RANK', '0')}.json", "w") as out:
            json.dump(RECORDS, out)
    return code


if __name__ == "__main__":
    sys.exit(main())
