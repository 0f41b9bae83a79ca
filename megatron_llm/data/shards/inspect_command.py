"""`megatron-llm inspect-data PREFIX`: check an indexed dataset and summarise it; `--decode N` shows documents.

The checks (`checks.py`, shared with merge-shards and train) are those a reader relies on: header, sizes,
sequence pointers equal to the running sum of lengths, document indices rising from 0 to the sequence
count. A failed check exits 2 naming the file.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from megatron_llm.data.shards.checks import document_tokens, token_id_range, validate
from megatron_llm.data.shards.indexed_writer import IndexInfo, read_index


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megatron-llm inspect-data", description="Check and summarise a dataset.")
    parser.add_argument("prefix", help="dataset prefix (PREFIX.bin + PREFIX.idx); a .bin/.idx path also works")
    parser.add_argument("--decode", type=int, default=0, metavar="N", help="print the first N documents")
    parser.add_argument("--max-chars", type=int, default=500, help="truncate decoded documents to this many chars")
    parser.add_argument("--tokenizer", help="tokenizer directory, to decode (otherwise token ids are printed)")
    parser.add_argument("--tokenizer-type", help="or Megatron-LM's tokenizer flags")
    parser.add_argument("--tokenizer-model")
    return parser


def describe(prefix: str, index: IndexInfo) -> str:
    per_doc = document_tokens(index)
    lines = [
        f"dataset      {prefix}",
        f"dtype        {index.dtype}",
        f"documents    {index.document_count}",
        f"sequences    {index.sequence_count}",
        f"tokens       {index.token_count}",
        f"bin size     {os.path.getsize(prefix + '.bin')} bytes",
    ]
    if per_doc.size:
        lines.append(
            "tokens/doc   "
            f"min {per_doc.min()}  median {int(np.median(per_doc))}  mean {per_doc.mean():.1f}  max {per_doc.max()}"
        )
        lines.append(f"empty docs   {int((per_doc == 0).sum())}")
    id_range = token_id_range(prefix, index)
    if id_range is not None:
        lines.append(f"token ids    {id_range[0]} .. {id_range[1]}")
    return "\n".join(lines)


def _tokenizer(args: argparse.Namespace):
    if args.tokenizer:
        from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

        return load_tokenizer(args.tokenizer)
    if args.tokenizer_type:
        from megatron_llm.data.tokenizers.megatron_flags import load_megatron_tokenizer

        return load_megatron_tokenizer(args.tokenizer_type, args.tokenizer_model)
    return None


def show_documents(prefix: str, index: IndexInfo, count: int, tokenizer, max_chars: int) -> str:
    data = np.memmap(prefix + ".bin", mode="r", dtype=index.dtype)
    ends = np.concatenate([[0], np.cumsum(index.sequence_lengths, dtype=np.int64)])
    out = []
    for doc in range(min(count, index.document_count)):
        start, stop = ends[index.document_indices[doc]], ends[index.document_indices[doc + 1]]
        ids = data[start:stop].tolist()
        if tokenizer is None:
            shown = " ".join(map(str, ids[:64])) + (" ..." if len(ids) > 64 else "")
        else:
            text = tokenizer.decode(ids)
            shown = text[:max_chars] + ("..." if len(text) > max_chars else "")
        out.append(f"--- document {doc} ({len(ids)} tokens)\n{shown}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    prefix = args.prefix[:-4] if args.prefix.endswith((".bin", ".idx")) else args.prefix
    index = read_index(prefix)
    validate(prefix, index)
    print(describe(prefix, index))
    if args.decode:
        print(show_documents(prefix, index, args.decode, _tokenizer(args), args.max_chars))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
