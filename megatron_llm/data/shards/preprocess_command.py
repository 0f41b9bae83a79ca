"""`megatron-llm preprocess-data`: tokenize a corpus into Megatron indexed shards (`PREFIX_KEY_document`).

Accepts Megatron-LM's `tools/preprocess_data.py` flags and writes the same bytes; never imports torch or
megatron-core. The main process reads the input and writes the output; workers parse and tokenize chunks
of ~4 MB. At most a few chunks are in flight, so memory does not grow with the corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field

from megatron_llm.data.readers import ERROR_REASONS, expand_inputs
from megatron_llm.data.shards.indexed_writer import IndexedDatasetWriter, optimal_dtype
from megatron_llm.data.shards.inputs import Chunk, Source, iter_chunks, line_number_at, plan_sources
from megatron_llm.data.shards.worker import (
    BadRecord,
    ChunkResult,
    EncodeOptions,
    encode_chunk,
    init_worker,
    init_worker_from_queue,
)
from megatron_llm.data.tokenizers.tokenizer import Tokenizer, load_tokenizer
from megatron_llm.errors import UsageError, located
from megatron_llm.runtime.disk import output_error
from megatron_llm.runtime.run_lock import RunLock

IGNORED_MEGATRON_FLAGS = ("--log-interval", "--partitions", "--lang", "--dataset-impl", "--vocab-size")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="megatron-llm preprocess-data",
        description="Tokenize JSONL/Parquet/text into Megatron indexed datasets PREFIX_KEY_document.bin/.idx.",
    )
    parser.add_argument("--input", nargs="+", required=True, help="files, globs or directories")
    parser.add_argument("--output-prefix", required=True, help="writes PREFIX_KEY_document.bin/.idx")
    source = parser.add_argument_group("tokenizer (a tokenizer directory, or Megatron-LM's flags)")
    source.add_argument("--tokenizer", help="a directory written by train-tokenizer")
    source.add_argument("--tokenizer-type", help="SentencePieceTokenizer, GPTSentencePieceTokenizer, ...")
    source.add_argument("--tokenizer-model", help="SentencePiece .model file or Hugging Face directory")
    source.add_argument("--vocab-file", help="GPT2BPETokenizer vocab.json")
    source.add_argument("--merge-file", help="GPT2BPETokenizer merges.txt")
    source.add_argument("--legacy-tokenizer", action="store_true",
                        help="ids of Megatron-LM's --legacy-tokenizer (megatron.training.tokenizer)")
    source.add_argument("--save-tokenizer", metavar="DIR", help="also write the tokenizer as a tokenizer directory "
                        "(for data.tokenizer: training then uses its vocabulary size and EOD id)")
    parser.add_argument("--json-keys", nargs="+", default=["text"], help="keys to tokenize (default: text)")
    parser.add_argument("--append-eod", action="store_true", help="end every non-empty document with EOD")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizing processes")
    parser.add_argument("--shard-index", type=int, default=0, help="this run's share of the input (0-based)")
    parser.add_argument("--num-shards", type=int, default=1, help="how many runs share the input")
    parser.add_argument(
        "--on-error", choices=("stop", "skip"), default="stop", help="stop at a malformed line, or skip and count"
    )
    parser.add_argument(
        "--max-skipped-fraction", type=float, default=0.9, metavar="F",
        help="with --on-error skip: fail when more than this fraction of all lines is skipped (default 0.9); "
        "a file whose every line is skipped always fails",
    )
    parser.add_argument(
        "--text-unit", choices=("file", "line"), default="file", help=".txt inputs: one document per file or line"
    )
    parser.add_argument("--split-sentences", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep-newlines", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keep-sequential-samples", action="store_true", help=argparse.SUPPRESS)
    for flag in IGNORED_MEGATRON_FLAGS:
        parser.add_argument(flag, help=argparse.SUPPRESS)
    return parser


def resolve_tokenizer(args: argparse.Namespace) -> Tokenizer:
    """Our tokenizer directory, or the tokenizer Megatron-LM would build from its flags."""
    if args.tokenizer and args.tokenizer_type:
        raise UsageError("give either --tokenizer DIR or Megatron-LM's --tokenizer-type/--tokenizer-model, not both")
    if args.tokenizer:
        return load_tokenizer(args.tokenizer)
    if not args.tokenizer_type:
        raise UsageError("--tokenizer DIR (or Megatron-LM's --tokenizer-type and --tokenizer-model) is required")
    from megatron_llm.data.tokenizers.megatron_flags import load_megatron_tokenizer

    return load_megatron_tokenizer(args.tokenizer_type, args.tokenizer_model, args.vocab_file, args.merge_file,
                                   legacy=args.legacy_tokenizer)


def _validate(args: argparse.Namespace) -> None:
    if args.split_sentences:
        raise UsageError("--split-sentences is not supported (it needs NLTK); split documents before preprocessing")
    if args.workers < 1:
        raise UsageError(f"--workers: must be at least 1, got {args.workers}")
    if args.num_shards < 1 or not 0 <= args.shard_index < args.num_shards:
        raise UsageError(f"--shard-index {args.shard_index} --num-shards {args.num_shards}: need 0 <= I < N")
    if not 0.0 <= args.max_skipped_fraction <= 1.0:
        raise UsageError(f"--max-skipped-fraction: must be between 0 and 1, got {args.max_skipped_fraction}")
    if len(set(args.json_keys)) != len(args.json_keys):
        raise UsageError(f"--json-keys: duplicate key in {args.json_keys}")


@dataclass
class Stats:
    lines: int = 0
    documents: int = 0
    skipped: Counter = field(default_factory=Counter)
    empty: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    input_bytes: int = 0
    lines_by_source: Counter = field(default_factory=Counter)
    skipped_by_source: Counter = field(default_factory=Counter)


class _WorkerPool:
    """Worker processes started before the tokenizer is loaded, so that their start-up (a fresh interpreter
    each) overlaps the main process's tokenizer loading (seconds with Megatron-LM's HuggingFaceTokenizer);
    each worker then takes the tokenizer from a queue. With one worker everything runs in this process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = self.queue = None
        if workers > 1:
            import multiprocessing

            context = multiprocessing.get_context("spawn")
            self.queue = context.SimpleQueue()
            self.pool = context.Pool(workers, initializer=init_worker_from_queue, initargs=(self.queue,))

    def __enter__(self) -> _WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()

    def results(
        self, chunks: Iterator[Chunk], tokenizer: Tokenizer, options: EncodeOptions
    ) -> Iterator[tuple[Chunk, ChunkResult]]:
        """(chunk, result) in input order; at most 2 chunks per worker are in flight."""
        if self.pool is None:
            init_worker(tokenizer, options)
            for chunk in chunks:
                yield chunk, encode_chunk(chunk)
            return
        for _ in range(self.workers):
            self.queue.put((tokenizer, options))
        pending: deque = deque()
        for chunk in chunks:
            meta = dataclasses.replace(chunk, data=None, files=None)
            pending.append((meta, self.pool.apply_async(encode_chunk, (chunk,))))
            if len(pending) >= 2 * self.workers:
                done, waiting = pending.popleft()
                yield done, waiting.get()
        while pending:
            done, waiting = pending.popleft()
            yield done, waiting.get()


def _locate(bad: BadRecord, chunk: Chunk, sources: dict[int, Source]) -> tuple[str, int]:
    source = sources[bad.source]
    if bad.absolute:
        return str(source.path), bad.line
    first = chunk.first_line if chunk.first_line is not None else line_number_at(source.path, chunk.offset)
    return str(source.path), first + bad.line


def run(args: argparse.Namespace) -> Stats:
    """Tokenize the input into the output datasets; returns the counts for the summary.

    The output prefix is locked for the run (`PREFIX.lock`); a full or read-only output is one line
    naming the path (exit 2), and the partial output is removed (the writers only ever write temporary
    files until the end)."""
    _validate(args)
    try:
        with RunLock(f"{args.output_prefix}.lock", "preprocess-data run"), _WorkerPool(args.workers) as pool:
            return _run(args, pool)
    except OSError as error:
        problem = output_error(error, f"the tokenized shards {args.output_prefix}_*_document.bin/.idx")
        if problem is None or (error.filename and not str(error.filename).startswith(str(args.output_prefix))):
            raise
        raise problem from error


def _check_skips(args: argparse.Namespace, stats: Stats, sources: dict[int, Source]) -> None:
    """Fail when a file had every line skipped, or more than --max-skipped-fraction of all lines were."""
    for index, lines in sorted(stats.lines_by_source.items()):
        if lines and stats.skipped_by_source[index] == lines:
            raise UsageError(f"{sources[index].path}: all {lines} lines were skipped as malformed (is it the "
                             "right file, format and --json-keys?)")
    skipped = sum(stats.skipped.values())
    if stats.lines and skipped / stats.lines > args.max_skipped_fraction:
        raise UsageError(f"{skipped} of {stats.lines} lines were skipped as malformed, more than "
                         f"--max-skipped-fraction {args.max_skipped_fraction}")


def _run(args: argparse.Namespace, pool: _WorkerPool) -> Stats:
    tokenizer = resolve_tokenizer(args)
    if args.save_tokenizer:
        from megatron_llm.data.tokenizers.megatron_flags import save_megatron_tokenizer

        save_megatron_tokenizer(tokenizer, args.save_tokenizer)
    files = expand_inputs(args.input)
    sources = plan_sources(files, args.shard_index, args.num_shards, args.text_unit)
    dtype = optimal_dtype(tokenizer.vocab_size)
    keys = tuple(args.json_keys)
    options = EncodeOptions(keys, args.append_eod, dtype.__name__, tuple(str(path) for path in files))
    by_index = {source.index: source for source in sources}
    exact = all(source.splittable or source.kind == "textfile" for source in sources)
    total_bytes = None
    if exact:
        total_bytes = sum((source.end or os.path.getsize(source.path)) - source.start for source in sources)
    stats = Stats()
    with ExitStack() as stack:
        writers = {
            key: stack.enter_context(IndexedDatasetWriter(f"{args.output_prefix}_{key}_document", dtype))
            for key in keys
        }
        progress = stack.enter_context(_progress(total_bytes))
        for chunk, result in pool.results(iter_chunks(sources, list(keys)), tokenizer, options):
            if result.bad and args.on_error == "stop":
                bad = result.bad[0]
                path, line = _locate(bad, chunk, by_index)
                raise located(path, line, f"{bad.message} [{bad.reason}]; --on-error skip skips and counts such lines")
            stats.lines += result.lines
            stats.documents += result.documents
            stats.skipped.update(bad.reason for bad in result.bad)
            if chunk.kind != "textfile":
                stats.lines_by_source[chunk.source] += result.lines
                stats.skipped_by_source[chunk.source] += len(result.bad)
            stats.input_bytes += chunk.size
            for key, output in result.outputs.items():
                writers[key].add_documents(output.tokens, output.sequence_lengths, output.sequences_per_document)
                stats.tokens[key] += int(output.tokens.size)
                stats.empty[key] += output.empty
            progress.update(chunk.size, stats)
        if args.on_error == "skip":
            _check_skips(args, stats, by_index)
        for writer in writers.values():
            writer.finish()
    _warn_empty(files, stats)
    return stats


def _warn_empty(files: list, stats: Stats) -> None:
    for path in files:
        if os.path.getsize(path) == 0:
            print(f"warning: {path} is empty", file=sys.stderr)
    if stats.documents == 0:
        print("warning: the output holds no documents", file=sys.stderr)


class _progress:
    """A tqdm bar (on a terminal) showing MB/s, docs/s and tokens/s."""

    def __init__(self, total_bytes: int | None) -> None:
        self.total = total_bytes
        self.bar = None
        self.start = time.perf_counter()

    def __enter__(self) -> _progress:
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit="B", unit_scale=True, unit_divisor=1 << 20, desc="preprocess")
        return self

    def update(self, size: int, stats: Stats) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        tokens = sum(stats.tokens.values())
        self.bar.set_postfix_str(f"{stats.documents / elapsed:,.0f} docs/s, {tokens / elapsed / 1e6:.2f} M tokens/s")
        self.bar.update(size)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(args: argparse.Namespace, stats: Stats, seconds: float) -> str:
    """The end-of-run report; lines read always equals documents written plus skipped."""
    skipped = sum(stats.skipped.values())
    mb = stats.input_bytes / 1e6
    reasons = ", ".join(f"{reason} {stats.skipped[reason]}" for reason in ERROR_REASONS if stats.skipped[reason])
    lines = [
        f"preprocess-data: {mb:.1f} MB in {seconds:.1f} s ({mb / max(seconds, 1e-9):.1f} MB/s)",
        f"  lines read        {stats.lines}",
        f"  documents written {stats.documents}",
        f"  skipped           {skipped}" + (f" ({reasons})" if reasons else ""),
    ]
    for key in args.json_keys:
        tokens = stats.tokens[key]
        lines.append(
            f"  {args.output_prefix}_{key}_document: {tokens} tokens "
            f"({tokens / max(seconds, 1e-9) / 1e6:.2f} M tokens/s), empty documents {stats.empty[key]}"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    stats = run(args)
    print(summary(args, stats, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
