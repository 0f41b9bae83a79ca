"""`megatron-llm launch --nproc-per-node N -- train ...`: run a megatron-llm command under torchrun here.

For one machine without SLURM. torchrun's standalone rendezvous picks a free local port, so several runs
can share a machine. A `train` command's layout is checked against N before any worker starts, so a
mismatch is one line and exit 2 instead of N tracebacks. With `--max-restarts R`, torchrun restarts the
whole worker group after a failure or a preemption exit; the engine resumes from the run's latest
checkpoint.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="megatron-llm launch --nproc-per-node N [options] -- COMMAND [ARGS ...]",
    )
    parser.add_argument("--nproc-per-node", type=int, required=True, help="worker processes (one per GPU)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart all workers up to this many times after a failure (default 0)")
    parser.add_argument("--master-port", type=int,
                        help="fixed rendezvous port (default: torchrun --standalone picks a free one)")
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="a megatron-llm command and its arguments")
    return parser


def check_train_layout(argv: list[str], world_size: int) -> None:
    """Reject a `train` config whose parallel layout does not fit `world_size` processes."""
    from megatron_llm.config.loader import load_config
    from megatron_llm.config.validation import layout_problems
    from megatron_llm.training.command import build_parser as train_parser

    args, _ = train_parser().parse_known_args(argv)
    problems = layout_problems(load_config(args.config, args.overrides), world_size)
    if problems:
        raise UsageError(f"the layout does not fit --nproc-per-node {world_size}: " + "; ".join(problems))


def torchrun_command(nproc: int, command: list[str], max_restarts: int = 0,
                     master_port: int | None = None) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`) running `python -m megatron_llm COMMAND ...`."""
    rendezvous = (["--standalone"] if master_port is None
                  else ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{master_port}", "--nnodes=1"])
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "megatron_llm", *command]


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.nproc_per_node < 1:
        raise UsageError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
    if not command:
        raise UsageError("give the command to run after `--`, e.g. megatron-llm launch --nproc-per-node 2 -- "
                         "train --config examples/configs/tiny.yaml")
    from megatron_llm.cli import COMMANDS

    if command[0] not in COMMANDS or command[0] in ("launch", "slurm"):
        raise UsageError(f"{command[0]!r} is not a megatron-llm command that runs under torchrun")
    if command[0] == "train":
        check_train_layout(command[1:], args.nproc_per_node)
    cmd = torchrun_command(args.nproc_per_node, command, args.max_restarts, args.master_port)
    if args.dry_run:
        print(shlex.join(cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 1
