"""`megatron-llm launch --nproc-per-node N -- train ...`: run a megatron-llm command under torchrun here.

Without SLURM. On one machine torchrun's standalone rendezvous picks a free local port, so several runs
can share a machine. On several machines, run the same command on each with `--nnodes M --node-rank R
--rdzv-endpoint HOST:PORT` (HOST: one of the machines, reachable from all): torchrun's c10d rendezvous
gathers M x N workers there; select the network interface with NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME.
A `train` command's layout is checked against M x N before any worker starts, so a mismatch is one line
and exit 2 instead of a traceback per worker. With `--max-restarts R`, torchrun restarts the
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
        usage="megatron-llm launch --nproc-per-node N [--nnodes M --node-rank R --rdzv-endpoint HOST:PORT] "
              "[options] -- COMMAND [ARGS ...]",
    )
    parser.add_argument("--nproc-per-node", type=int, required=True, help="worker processes (one per GPU)")
    parser.add_argument("--nnodes", type=int, default=1, help="machines taking part (default 1)")
    parser.add_argument("--node-rank", type=int, help="this machine's rank, 0..nnodes-1 (with --nnodes > 1)")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT",
                        help="c10d rendezvous on HOST:PORT, the same on every machine (needed with --nnodes > 1)")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="restart all workers up to this many times after a failure (default 0)")
    parser.add_argument("--master-port", type=int,
                        help="fixed rendezvous port (default: torchrun --standalone picks a free one)")
    parser.add_argument("--dry-run", action="store_true", help="print the torchrun command instead of running it")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="a megatron-llm command and its arguments")
    return parser


def check_train_layout(argv: list[str], world_size: int, what: str) -> None:
    """Reject a `train` config that is invalid, or whose layout does not fit `world_size` processes (`what`
    says why), before torchrun starts: torchrun would report the ranks' exit 2 as its own exit 1."""
    from megatron_llm.config.loader import load_config
    from megatron_llm.config.validation import config_problems, layout_problems, ramp_problems
    from megatron_llm.training.command import build_parser as train_parser

    args, _ = train_parser().parse_known_args(argv)
    config = load_config(args.config, args.overrides)
    layout = layout_problems(config, world_size) + ramp_problems(config, world_size)
    if layout:
        raise UsageError(f"the layout does not fit {what}: " + "; ".join(layout))
    problems = [] if args.stage else config_problems(config)
    if problems:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(problems))


def recipe_environment_for(argv: list[str]) -> dict[str, str]:
    """Put the H100 recipe's process variables (runtime/gpu_env.py) that are not set into this environment, which
    torchrun and its workers inherit; nothing on a machine without CUDA. Returns those it set."""
    from megatron_llm.config.loader import load_config
    from megatron_llm.runtime.gpu_env import apply_recipe_environment
    from megatron_llm.runtime.hardware import detect_platform
    from megatron_llm.training.command import build_parser as train_parser

    args, _ = train_parser().parse_known_args(argv)
    return apply_recipe_environment(load_config(args.config, args.overrides), detect_platform())


def torchrun_command(nproc: int, command: list[str], max_restarts: int = 0, master_port: int | None = None,
                     nnodes: int = 1, node_rank: int | None = None, endpoint: str | None = None) -> list[str]:
    """torchrun (as `python -m torch.distributed.run`) running `python -m megatron_llm COMMAND ...`."""
    if nnodes > 1:
        rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--nnodes={nnodes}",
                      f"--node-rank={node_rank}"]
    elif master_port is not None:
        rendezvous = ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{master_port}", "--nnodes=1"]
    else:
        rendezvous = ["--standalone"]
    return [sys.executable, "-m", "torch.distributed.run", *rendezvous, f"--nproc-per-node={nproc}",
            f"--max-restarts={max_restarts}", "-m", "megatron_llm", *command]


def check_nodes(args: argparse.Namespace) -> None:
    """--nnodes/--node-rank/--rdzv-endpoint: all three for several machines, none of the last two for one."""
    if args.nnodes < 1:
        raise UsageError(f"--nnodes must be >= 1, got {args.nnodes}")
    if args.nnodes == 1:
        if args.node_rank not in (None, 0) or args.rdzv_endpoint:
            raise UsageError("--node-rank and --rdzv-endpoint are for --nnodes > 1")
        return
    if args.node_rank is None or not 0 <= args.node_rank < args.nnodes:
        raise UsageError(f"--nnodes {args.nnodes} needs --node-rank between 0 and {args.nnodes - 1}")
    host, _, port = (args.rdzv_endpoint or "").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--nnodes {args.nnodes} needs --rdzv-endpoint HOST:PORT, got {args.rdzv_endpoint!r}")
    if args.master_port is not None:
        raise UsageError("--master-port is for one machine; with --nnodes > 1 the port is --rdzv-endpoint's")


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
    check_nodes(args)
    if command[0] == "train":
        what = (f"--nproc-per-node {args.nproc_per_node}" if args.nnodes == 1 else
                f"--nnodes {args.nnodes} x --nproc-per-node {args.nproc_per_node} = "
                f"{args.nnodes * args.nproc_per_node} processes")
        check_train_layout(command[1:], args.nnodes * args.nproc_per_node, what)
    added = recipe_environment_for(command[1:]) if command[0] == "train" else {}
    cmd = torchrun_command(args.nproc_per_node, command, args.max_restarts, args.master_port, args.nnodes,
                           args.node_rank, args.rdzv_endpoint)
    if args.dry_run:
        print(shlex.join([f"{k}={v}" for k, v in added.items()] + cmd))
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 1
