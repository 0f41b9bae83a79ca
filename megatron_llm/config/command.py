"""`megatron-llm config show`: every configuration field with its value, default and documentation.

`--markdown` prints the README's reference table; `--update README.md` rewrites the README's generated block
(between the config-reference markers) in place.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from megatron_llm.config.fields import sections
from megatron_llm.config.loader import load_config
from megatron_llm.config.reference import render_markdown, render_text, replace_readme_block
from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    show = sub.add_parser("show", help="every field with its value, default and documentation")
    show.add_argument("--config", help="YAML config (default: the built-in defaults)")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a field, e.g. --set model.num_layers=8 (repeatable)")
    show.add_argument("--markdown", action="store_true",
                      help="a Markdown table (with a value column when --config or --set is given)")
    show.add_argument("--update", type=Path, metavar="README",
                      help="replace the generated reference block of this Markdown file with the defaults table")
    return parser


def _update(path: Path, block: str) -> None:
    if not path.is_file():
        raise UsageError(f"{path}: file not found")
    text = path.read_text()
    updated = replace_readme_block(text, block, str(path))
    if updated != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(updated)
        os.replace(tmp, path)
    print(f"{path}: configuration reference {'updated' if updated != text else 'already current'}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    customised = args.config is not None or bool(args.overrides)
    if args.update is not None:
        if customised:
            raise UsageError("--update writes the defaults table; drop --config and --set")
        _update(args.update, render_markdown(sections(load_config(None))))
        return 0
    info = sections(load_config(args.config, args.overrides))
    print(render_markdown(info, with_values=customised) if args.markdown else render_text(info), end="")
    return 0
