"""`megatron-llm runs show RUN_DIR [--plot loss.png]`: a run's config, progress, last metrics, checkpoints and
events, and optionally its curves as a PNG, for looking at a run on a cluster without TensorBoard."""

from __future__ import annotations

import argparse
from pathlib import Path

from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm runs", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="summarise a run directory")
    show.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    show.add_argument("--plot", type=Path, metavar="PNG",
                      help="also plot loss/val loss, LR and grad norm against steps and tokens (matplotlib)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from megatron_llm.runs.run_summary import describe

    print(describe(args.run_dir))
    if args.plot is not None:
        try:
            from megatron_llm.runs.curves import plot_run
        except ImportError as exc:
            raise UsageError(f"--plot needs matplotlib (pip install matplotlib): {exc}") from None
        plot_run(args.run_dir, args.plot)
        print(f"plot: {args.plot}")
    return 0
