"""`megatron-llm lm-eval ARGS`: lm-evaluation-harness's own command line with the `megatron-llm` model registered.

`megatron-llm lm-eval --model megatron-llm --model_args checkpoint=RUN/checkpoints --tasks arc_easy` takes
every `lm_eval` option. (The harness has no plugin discovery for models: a model class becomes known to
`lm_eval` only when imported, which this command does first.) Under torchrun only rank 0 prints.
"""

from __future__ import annotations

import contextlib
import os
import sys


def build_parser():
    """The harness's own parser (`megatron-llm lm-eval --help` shows its options)."""
    from lm_eval._cli import HarnessCLI

    return HarnessCLI()._parser


def main(argv: list[str]) -> int:
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    import megatron_llm.evaluation.harness  # noqa: F401  (registers the model class)

    rank = int(os.environ.get("RANK", "0"))
    setup_logging()
    parser = HarnessCLI()
    sys.argv = ["lm_eval", *argv]  # the harness's parser reads sys.argv
    args = parser.parse_args()
    quiet = open(os.devnull, "w") if rank else None  # noqa: SIM115
    with contextlib.redirect_stdout(quiet) if quiet else contextlib.nullcontext():
        try:
            parser.execute(args)
        finally:
            from megatron_llm.runtime.distributed import destroy_distributed

            destroy_distributed()
    if quiet:
        quiet.close()
    sys.stdout.flush()
    return 0
