"""`megatron-llm merge-shards`: concatenate indexed datasets, e.g. the outputs of a SLURM array.

Merging shards 0..N-1 of one input gives byte for byte what a single preprocess-data run gives. Inputs
are `.bin`/`.idx` files or prefixes (shell globs welcome), ordered naturally (`part_2` before `part_10`).
Inputs named `..._KEY_document` are grouped by key and each group is written to `OUTPUT_KEY_document`;
inputs without that suffix are merged into `OUTPUT` itself.
"""

from __future__ import annotations

import argparse
import glob
import re
import sys
import time

from megatron_llm.data.shards.checks import STATS_SUFFIX, check_dataset
from megatron_llm.data.shards.indexed_writer import IndexedDatasetWriter, dataset_prefixes, read_index
from megatron_llm.errors import UsageError

_NUMBER = re.compile(r"(\d+)")
_TEMPORARY = re.compile(r"\.tmp\d+$")
_SIDECARS = (STATS_SUFFIX, ".lock")


def natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in _NUMBER.split(name)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm merge-shards", description="Merge Megatron indexed datasets into one, in shard order."
    )
    parser.add_argument("--inputs", nargs="+", required=True, help=".bin/.idx files, prefixes or globs")
    parser.add_argument("--output-prefix", required=True, help="writes OUTPUT[_KEY_document].bin/.idx")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys the inputs were made with")
    return parser


def _expand(patterns: list[str]) -> list[str]:
    paths: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        matches = [path for path in matches if not _TEMPORARY.search(path) and not path.endswith(_SIDECARS)]
        if not matches:
            raise UsageError(f"--inputs {pattern!r}: matches no file")
        paths += matches
    return dataset_prefixes(paths)


def group_inputs(prefixes: list[str], output: str, keys: list[str]) -> dict[str, list[str]]:
    """Output prefix -> its input prefixes in natural order."""
    groups: dict[str, list[str]] = {}
    stems: dict[str, list[str]] = {}
    ungrouped = []
    for prefix in prefixes:
        key = next((key for key in keys if prefix.endswith(f"_{key}_document")), None)
        if key is None:
            ungrouped.append(prefix)
        else:
            groups.setdefault(f"{output}_{key}_document", []).append(prefix)
            stems.setdefault(key, []).append(prefix[: -len(f"_{key}_document")])
    if ungrouped and groups:
        raise UsageError(f"--inputs mix datasets named *_KEY_document with others ({ungrouped[0]})")
    if ungrouped:
        groups = {output: ungrouped}
    if len({tuple(sorted(stem)) for stem in stems.values()}) > 1:
        raise UsageError("--inputs: the keys were not produced by the same shards: " + ", ".join(groups))
    for name, members in groups.items():
        if name in members:
            raise UsageError(f"--output-prefix {output}: would overwrite input {name}")
        members.sort(key=natural_key)
    return groups


def merge(inputs: list[str], output: str) -> tuple[int, int, int]:
    """Write `output` from `inputs` in order; returns (documents, sequences, tokens)."""
    dtypes = {check_dataset(prefix).dtype for prefix in inputs}
    if len(dtypes) > 1:
        raise UsageError(f"inputs of {output} have different token dtypes ({', '.join(sorted(dtypes))})")
    with IndexedDatasetWriter(output, read_index(inputs[0]).dtype.type) as writer:
        for prefix in inputs:
            writer.add_dataset(prefix)
        writer.finish()
        return writer.documents, writer.sequences, writer.tokens


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    groups = group_inputs(_expand(args.inputs), args.output_prefix, args.json_keys)
    for output, inputs in groups.items():
        documents, sequences, tokens = merge(inputs, output)
        print(f"{output}: {len(inputs)} inputs, {documents} documents, {sequences} sequences, {tokens} tokens")
    print(f"merge-shards: done in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
