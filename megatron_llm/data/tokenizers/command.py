"""`megatron-llm train-tokenizer`: train a tokenizer on a uniform sample of the corpus, write a tokenizer
directory, and with `--report` show its fertility per script next to a baseline tokenizer."""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import chain
from pathlib import Path

from megatron_llm.data.readers import expand_inputs, iter_records
from megatron_llm.data.tokenizers.sample import parse_size, sample_corpus
from megatron_llm.data.tokenizers.trainers import MODEL_TYPES, save, train
from megatron_llm.errors import UsageError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm train-tokenizer",
        description="Train a SentencePiece (bpe, unigram) or byte-level BPE tokenizer into a tokenizer directory.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="files, globs or directories")
    parser.add_argument("--model-type", choices=MODEL_TYPES, required=True)
    parser.add_argument("--vocab-size", type=int, required=True)
    parser.add_argument("--output", required=True, help="tokenizer directory to write")
    parser.add_argument("--sample-bytes", default="1G", help="train on a uniform sample of at most this size")
    parser.add_argument("--special-tokens", nargs="*", default=[], help="extra tokens that are never split")
    parser.add_argument("--byte-fallback", action="store_true", help="SentencePiece: unknown characters as bytes")
    parser.add_argument("--chat-template", help="file with a Jinja chat template to store in the manifest")
    parser.add_argument("--report", action="store_true", help="print fertility per script on held-out documents")
    parser.add_argument("--baseline", help="tokenizer to compare with in the report (directory or model file)")
    parser.add_argument("--heldout-percent", type=float, default=None, help="held out for --report (default 2)")
    parser.add_argument("--json-key", default="text", help="JSON key holding the text (default: text)")
    parser.add_argument("--text-unit", choices=("file", "line"), default="file", help=".txt: document per file/line")
    parser.add_argument("--on-error", choices=("stop", "skip"), default="stop")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def _validate(args: argparse.Namespace) -> None:
    if args.vocab_size < 8:
        raise UsageError(f"--vocab-size: must be at least 8, got {args.vocab_size}")
    if args.model_type == "byte-bpe" and args.vocab_size < 258 + len(args.special_tokens):
        raise UsageError("--vocab-size: byte-bpe needs at least 256 bytes + special tokens + 2")
    if args.byte_fallback and args.model_type == "byte-bpe":
        raise UsageError("--byte-fallback is for SentencePiece models; byte-bpe covers all bytes already")
    if len(set(args.special_tokens)) != len(args.special_tokens) or "" in args.special_tokens:
        raise UsageError(f"--special-tokens: empty or repeated token in {args.special_tokens}")
    if args.baseline and not args.report:
        raise UsageError("--baseline is only used with --report")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _validate(args)
    budget = parse_size(args.sample_bytes)
    heldout_percent = args.heldout_percent if args.heldout_percent is not None else (2.0 if args.report else 0.0)
    chat_template = Path(args.chat_template).read_text(encoding="utf-8") if args.chat_template else None
    baseline = None
    if args.baseline:
        from megatron_llm.data.tokenizers.fertility_report import load_any_tokenizer

        baseline = load_any_tokenizer(args.baseline)
    start = time.perf_counter()
    files = expand_inputs(args.input)
    records = chain.from_iterable(iter_records(path, (args.json_key,), args.text_unit) for path in files)
    sample = sample_corpus(records, args.json_key, budget, heldout_percent, seed=args.seed, on_error=args.on_error)
    if not sample.train:
        raise UsageError("no documents to train on (all inputs were empty, skipped or held out)")
    tokenizer = train(
        sample.train, args.model_type, args.vocab_size, args.special_tokens, args.byte_fallback, chat_template
    )
    save(tokenizer, args.output)
    skipped = sum(sample.skipped.values())
    print(
        f"train-tokenizer: {args.model_type} vocab {tokenizer.vocab_size} trained on {len(sample.train)} of "
        f"{sample.documents} documents ({sample.sampled_bytes / 1e6:.1f} of {sample.total_bytes / 1e6:.1f} MB)"
        f"{f', {skipped} lines skipped' if skipped else ''} in {time.perf_counter() - start:.1f} s"
    )
    print(f"  wrote {args.output}: eod_id {tokenizer.eod_id}, bos_id {tokenizer.bos_id}, pad_id {tokenizer.pad_id}")
    if args.report:
        _report(args, tokenizer, baseline, sample.heldout)
    return 0


def _report(args, tokenizer, baseline, heldout: list[str]) -> None:
    from megatron_llm.data.tokenizers.fertility_report import fertility, format_report

    if not heldout:
        print("report: no held-out documents (the corpus is small; raise --heldout-percent)")
        return
    tokenizers = {"ours": tokenizer}
    if baseline is not None:
        tokenizers["baseline"] = baseline
    rows = fertility(heldout, tokenizers)
    print(format_report(rows, list(tokenizers)))
    report = {"heldout_documents": len(heldout), "baseline": args.baseline, "scripts": rows}
    (Path(args.output) / "fertility_report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
