"""MinHash signature throughput of `megatron-llm curate` against datasketch, on the same ~1 KB documents.

Both sides go from raw text to a 128-permutation signature of word 5-gram shingles, timed in CPU seconds
of this process (so the number is per core). datasketch gets its shingles from a Python regex split
(its usual use) and is timed both one document at a time (`MinHash.update_batch`) and with its bulk API.

    python benchmarks/curate_minhash.py [--docs 4000] [--end-to-end-mb 8]

`--end-to-end-mb` also runs the whole `examples/curate/web.yaml` pipeline on that many MB of standard
library text in this process and prints MB per core-hour.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

NUM_PERM = 128
NGRAM = 5
_WORDS = re.compile(r"\w+")


def _cpu(function, *args) -> tuple[float, object]:
    started = time.process_time()
    result = function(*args)
    return time.process_time() - started, result


def _shingles(text: str) -> list[bytes]:
    words = _WORDS.findall(text.lower())
    return [" ".join(words[i : i + NGRAM]).encode() for i in range(max(1, len(words) - NGRAM + 1))]


def datasketch_one_by_one(texts: list[str]) -> list:
    from datasketch import MinHash

    out = []
    for text in texts:
        minhash = MinHash(num_perm=NUM_PERM)
        minhash.update_batch(_shingles(text))
        out.append(minhash)
    return out


def datasketch_bulk(texts: list[str]) -> list:
    from datasketch import MinHash

    return MinHash.bulk([_shingles(t) for t in texts], num_perm=NUM_PERM)


def ours(texts: list[str]):
    from megatron_llm.data.curate.stages.minhash import MinHasher

    return MinHasher(num_perm=NUM_PERM, ngram=NGRAM).signatures(texts)


def minhash_benchmark(count: int) -> None:
    from megatron_llm.data.curate.corpus import stdlib_chunks

    texts = stdlib_chunks(count, size=1000)
    ours(texts[:64])  # warm-up: power tables, imports
    datasketch_one_by_one(texts[:16])
    results = {}
    for name, function in (
        ("megatron-llm (numpy)", ours),
        ("datasketch update_batch", datasketch_one_by_one),
        ("datasketch bulk", datasketch_bulk),
    ):
        seconds, _ = _cpu(function, texts)
        results[name] = len(texts) / seconds
        print(f"{name:<26} {results[name]:>10,.0f} docs per CPU-second")
    mine = results["megatron-llm (numpy)"]
    print(f"ratio vs datasketch one by one: {mine / results['datasketch update_batch']:.1f}x")
    print(f"ratio vs datasketch bulk:       {mine / results['datasketch bulk']:.1f}x")


def end_to_end(megabytes: float) -> None:
    from megatron_llm.data.curate import command
    from megatron_llm.data.curate.corpus import stdlib_docstrings

    repo = Path(__file__).resolve().parents[1]
    docs = stdlib_docstrings(100_000, min_chars=200, max_chars=4000)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        size, index = 0, 0
        handles = [open(raw / f"{i}.jsonl", "w", encoding="utf-8") for i in range(4)]
        while size < megabytes * 1e6:
            line = json.dumps({"id": index, "text": docs[index % len(docs)] + f"\n\n{index}"}) + "\n"
            handles[index % 4].write(line)
            size += len(line.encode())
            index += 1
        for handle in handles:
            handle.close()
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        config = str(repo / "examples" / "curate" / "web.yaml")
        command.main(["--input", str(raw), "--output", str(Path(tmp) / "out"), "--config", config])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(
            f"end to end (web.yaml, {index:,} docs, {size / 1e6:.1f} MB): {cpu:.1f} CPU s, "
            f"{time.perf_counter() - started:.1f} s wall, {size / 1e6 / cpu * 3600:,.0f} MB per core-hour"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4000, help="number of ~1 KB documents")
    parser.add_argument("--end-to-end-mb", type=float, default=0.0, help="also time the web.yaml pipeline")
    args = parser.parse_args(argv)
    minhash_benchmark(args.docs)
    if args.end_to_end_mb > 0:
        end_to_end(args.end_to_end_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
