"""preprocess-data against Megatron-LM's approach, in the same run, on >= 50 MB of real text.

Corpus: Debian's python3.11-doc and linux-doc text sources (installed with apt-get when missing and
allowed), then the Python standard library's source; one JSON line per file, exact duplicates dropped
(linux-doc ships most documents twice, as .txt and as .rst.gz), so caches do not flatter either side.
The reference reproduces Megatron-LM's `tools/preprocess_data.py`: torch and megatron-core imported, a
multiprocessing pool that parses and encodes each line and pickles the ids back (`imap`, chunksize 32),
megatron-core's `IndexedDatasetBuilder` writing. Both sides run as fresh processes with 2 workers; wall time includes
startup. Peak RSS is the largest summed RSS of the process tree, sampled every 50 ms, also on a quarter of
the corpus and on the corpus four times over: it must not grow with the input.

    python benchmarks/preprocess.py [--workers 2] [--min-mb 50] [--cache DIR]
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import psutil

from megatron_llm.data.tokenizers.bpe_backend import ENV

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    "/usr/share/doc/python3.11/html/_sources/**/*.txt",
    "/usr/share/doc/linux-doc-*/html/_sources/**/*.txt",
    "/usr/share/doc/linux-doc-*/Documentation/**/*.rst.gz",
]

REFERENCE = r'''
import json, multiprocessing, sys, time
import numpy
import torch  # Megatron-LM's tool imports torch and megatron before reading anything
from megatron.core.datasets import indexed_dataset

kind, model, source, prefix, workers = sys.argv[1:6]

def build():
    if kind == "sentencepiece":
        sys.path.insert(0, __file__.rsplit("/", 1)[0])
        from reference_tokenizer import MegatronSentencePiece
        return MegatronSentencePiece(model)
    import transformers
    class HF:
        def __init__(self):
            self.tok = transformers.AutoTokenizer.from_pretrained(model)
            self.vocab_size, self.eod = len(self.tok), self.tok.eos_token_id
        def tokenize(self, text):
            return self.tok(text).input_ids
    return HF()

class Encoder:
    def initializer(self):
        Encoder.tokenizer = build()
    def encode(self, line):
        data = json.loads(line)
        ids = Encoder.tokenizer.tokenize(data["text"])
        lens = [len(ids)] if ids else []
        if ids:
            ids.append(Encoder.tokenizer.eod)
            lens[-1] += 1
        return ids, lens, len(line)

if __name__ == "__main__":
    tokenizer = build()
    encoder = Encoder()
    pool = multiprocessing.Pool(int(workers), initializer=encoder.initializer)
    with open(source, encoding="utf-8") as fin, pool:
        builder = indexed_dataset.IndexedDatasetBuilder(
            prefix + ".bin", dtype=indexed_dataset.DType.optimal_dtype(tokenizer.vocab_size))
        for ids, lens, _ in pool.imap(encoder.encode, fin, 32):
            builder.add_document(ids, lens)
        builder.finalize(prefix + ".idx")
'''

REFERENCE_TOKENIZER = r'''
import sentencepiece

class MegatronSentencePiece:
    """Megatron-LM's SentencePieceTokenizer, restated: specials appended to the vocabulary, text cut at
    the earliest special (scanning each one with str.index, as Megatron-LM does)."""

    def __init__(self, model):
        self.sp = sentencepiece.SentencePieceProcessor(model_file=model)
        vocab = {self.sp.id_to_piece(i): i for i in range(self.sp.get_piece_size())}
        self.specials = {}
        names = ["<CLS>", "<SEP>", "<EOD>", "<MASK>"]
        for method, fallback in (("pad_id", "<PAD>"), ("bos_id", "<BOS>"), ("eos_id", "<EOS>")):
            i = getattr(self.sp, method)()
            names.append(self.sp.id_to_piece(i) if 0 <= i < self.sp.get_piece_size() else fallback)
        for name in names:
            vocab.setdefault(name, len(vocab))
            self.specials.setdefault(name, vocab[name])
        self.vocab_size, self.eod = len(vocab), vocab["<EOD>"]

    def tokenize(self, text):
        ids, idx = [], 0
        while True:
            found = {}
            for token in self.specials:
                try:
                    found[token] = text[idx:].index(token)
                except ValueError:
                    continue
            if not found:
                break
            token = min(found, key=found.get)
            ids.extend(self.sp.encode_as_ids(text[idx : idx + found[token]]))
            ids.append(self.specials[token])
            idx += found[token] + len(token)
        return ids + self.sp.encode_as_ids(text[idx:])
'''


def build_corpus(path: Path, min_mb: float) -> Path:
    if path.exists() and path.stat().st_size >= min_mb * 1e6:
        return path
    files = sorted({f for pattern in SOURCES for f in glob.glob(pattern, recursive=True)})
    if sum(os.path.getsize(f) for f in files) < min_mb * 0.6e6 and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing python3.11-doc and linux-doc for the corpus (apt-get)", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "python3.11-doc", "linux-doc"], check=False,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        files = sorted({f for pattern in SOURCES for f in glob.glob(pattern, recursive=True)})
    files += sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "**", "*.py"), recursive=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    total, seen = 0, set()
    with open(path, "w", encoding="utf-8") as out:
        for name in files:
            raw = gzip.open(name).read() if name.endswith(".gz") else open(name, "rb").read()
            text = raw.decode("utf-8", errors="replace")
            digest = hashlib.sha1(text.strip().encode()).digest()
            if text.strip() and digest not in seen:
                seen.add(digest)
                out.write(json.dumps({"text": text}) + "\n")
                total += len(raw)
            if total >= min_mb * 1e6:
                break
    if total < min_mb * 1e6:
        print(f"warning: only {total / 1e6:.1f} MB of text found", file=sys.stderr)
    return path


def first_megabytes(source: Path, target: Path, megabytes: float) -> Path:
    with open(source, "rb") as stream, open(target, "wb") as out:
        written = 0
        for line in stream:
            out.write(line)
            written += len(line)
            if written >= megabytes * 1e6:
                break
    return target


def tokenizers(cache: Path, corpus: Path) -> dict[str, Path]:
    from megatron_llm.data.tokenizers.tokenizer import export_for_hf

    made = {}
    for kind, model_type in (("sentencepiece", "bpe"), ("hf", "byte-bpe")):
        directory = cache / f"tok-{model_type}-32k"
        if not (directory / "megatron_llm_tokenizer.json").exists():
            print(f"training a 32k {model_type} tokenizer (cached in {directory})", flush=True)
            args = ["--input", str(corpus), "--model-type", model_type, "--vocab-size", "32000", "--output",
                    str(directory), "--sample-bytes", "12M"] + (["--byte-fallback"] if kind == "sentencepiece" else [])
            run([sys.executable, "-m", "megatron_llm", "train-tokenizer", *args])
        export_for_hf(directory, cache / f"hf-{model_type}-32k")
        made[kind] = directory
    return made


def run(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(wall seconds, peak summed RSS of the process tree in MiB)."""
    start = time.perf_counter()
    process = psutil.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, **(env or {})})
    peak = 0
    while process.poll() is None:
        try:
            tree = [process, *process.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{process.stderr.read()}")
    return wall, peak / 2**20


def encoder_mode(directory: Path) -> str:
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

    return load_tokenizer(directory).encoder_name


def same(prefix_a: str, prefix_b: str) -> bool:
    return all(Path(prefix_a + s).read_bytes() == Path(prefix_b + s).read_bytes() for s in (".bin", ".idx"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--min-mb", type=float, default=50)
    parser.add_argument("--cache", default=os.environ.get("MEGATRON_LLM_BENCH_CACHE", "/tmp/megatron-llm-bench"))
    args = parser.parse_args()
    cache = Path(args.cache)
    corpus = build_corpus(cache / "corpus.jsonl", args.min_mb)
    quarter = first_megabytes(corpus, cache / "corpus-quarter.jsonl", corpus.stat().st_size / 4e6)
    fourfold = cache / "corpus-x4.jsonl"
    if not fourfold.exists() or fourfold.stat().st_size != 4 * corpus.stat().st_size:
        fourfold.write_bytes(corpus.read_bytes() * 4)
    toks = tokenizers(cache, corpus)
    (cache / "reference.py").write_text(REFERENCE)
    (cache / "reference_tokenizer.py").write_text(REFERENCE_TOKENIZER)
    out = cache / "out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    mb = corpus.stat().st_size / 1e6
    print(f"corpus: {mb:.1f} MB, {sum(1 for _ in open(corpus))} documents; workers: {args.workers}")
    ours_cli = [sys.executable, "-m", "megatron_llm", "preprocess-data", "--append-eod", "--workers", str(args.workers)]
    rows = []
    for kind, directory in toks.items():
        hf_dir = cache / f"hf-{directory.name[4:]}"
        model = str(directory / "tokenizer.model") if kind == "sentencepiece" else str(hf_dir)
        ref_wall, ref_rss = run([sys.executable, str(cache / "reference.py"), kind, model, str(corpus),
                                 str(out / f"ref-{kind}"), str(args.workers)])
        flags = (["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--legacy-tokenizer"]
                 if kind == "sentencepiece"
                 else ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", model])
        mega_wall, mega_rss = run([*ours_cli, "--input", str(corpus), "--output-prefix", str(out / f"flags-{kind}"),
                                   *flags])
        ours_wall, ours_rss = run([*ours_cli, "--input", str(corpus), "--output-prefix", str(out / f"ours-{kind}"),
                                   "--tokenizer", str(directory)])
        plain_wall, plain_rss = run([*ours_cli, "--input", str(corpus), "--output-prefix", str(out / f"plain-{kind}"),
                                     "--tokenizer", str(directory)], {ENV: "reference"})
        _, quarter_rss = run([*ours_cli, "--input", str(quarter), "--output-prefix", str(out / f"q-{kind}"),
                              "--tokenizer", str(directory)])
        _, fourfold_rss = run([*ours_cli, "--input", str(fourfold), "--output-prefix", str(out / f"x4-{kind}"),
                               "--tokenizer", str(directory)])
        identical = same(str(out / f"ref-{kind}"), str(out / f"flags-{kind}_text_document"))
        identical &= same(str(out / f"ours-{kind}_text_document"), str(out / f"plain-{kind}_text_document"))
        tokens = (out / f"ours-{kind}_text_document.bin").stat().st_size // 2
        timings = [("Megatron-LM approach (reference)", ref_wall, ref_rss), ("ours, Megatron-LM flags", mega_wall,
                   mega_rss), ("ours, --tokenizer DIR", ours_wall, ours_rss), (f"ours, {ENV}=reference", plain_wall,
                   plain_rss)]
        (out / f"x4-{kind}_text_document.bin").unlink()
        rows.append((kind, timings, (quarter_rss, fourfold_rss), identical, tokens, encoder_mode(directory)))
    print(f"\n{'tokenizer':<14}{'run':<45}{'wall s':>8}{'MB/s':>8}{'Mtok/s':>8}{'peak RSS MiB':>14}{'speedup':>9}")
    for kind, timings, (quarter_rss, fourfold_rss), identical, tokens, mode in rows:
        ref_wall = timings[0][1]
        for name, wall, rss in timings:
            print(f"{kind:<14}{name:<45}{wall:>8.2f}{mb / wall:>8.2f}{tokens / wall / 1e6:>8.2f}{rss:>14.0f}"
                  f"{ref_wall / wall:>8.2f}x")
        print(f"{kind:<14}{'ours on a quarter of the corpus':<45}{'':>24}{quarter_rss:>14.0f}")
        print(f"{kind:<14}{'ours on the corpus four times over':<45}{'':>24}{fourfold_rss:>14.0f}")
        print(f"{kind:<14}encoder: {mode}; every output byte-identical to the reference's: {identical}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
