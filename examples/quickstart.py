"""`make demo`: the whole path from raw text to a Hugging Face model, on this machine's CPU.

raw JSONL -> curate -> train-tokenizer -> preprocess-data -> train (2 processes, TP=2) -> convert to-hf ->
generate with transformers. The corpus is the Python standard library's own docstrings, which every
machine has. Everything goes under ./demo_run (or the directory given as the first argument).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

CURATE_CONFIG = """\
text_key: text
stages:
  - normalize: {}
  - exact_dedup: {}
  - quality: {min_words: 20, min_stop_words: 1, c4_terminal_punctuation: false, c4_min_sentences: 1,
              c4_curly_braces: false, max_symbol_word_ratio: 0.5, min_alpha_words_ratio: 0.5}
  - minhash_dedup: {ngram: 5, num_perm: 128, bands: 16, rows: 8, threshold: 0.8}
  - pii: {}
"""


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*args: str, launcher: list[str] | None = None) -> None:
    command = (launcher or [PY, "-m", "megatron_llm"]) + list(args)
    print("$ megatron-llm " + " ".join(args) if launcher is None else "$ " + " ".join(command[2:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def write_raw_corpus(raw: Path) -> int:
    """Standard-library docstrings as JSONL, plus a few near-copies and an e-mail for curate to find."""
    from megatron_llm.data.curate.corpus import stdlib_docstrings

    docs = stdlib_docstrings(6000, min_chars=200, max_chars=4000)
    rng = random.Random(0)
    copies = [d.replace(" the ", " a ", 1) for d in rng.sample(docs, 100)]
    docs = docs + copies + ["Questions about this module go to maintainer@example.org, who answers them."]
    rng.shuffle(docs)
    raw.mkdir(parents=True, exist_ok=True)
    half = len(docs) // 2
    for index, part in enumerate((docs[:half], docs[half:])):
        with open(raw / f"part{index}.jsonl", "w") as out:
            for doc_id, text in enumerate(part):
                out.write(json.dumps({"id": f"{index}-{doc_id}", "text": text}) + "\n")
    return len(docs)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "demo_run").resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    started = time.time()

    step("1/6 raw text: the Python standard library's docstrings as JSONL")
    print(f"{write_raw_corpus(work / 'raw')} documents in {work / 'raw'}")

    step("2/6 curate: normalise, deduplicate (exact and MinHash), filter, redact PII")
    (work / "curate.yaml").write_text(CURATE_CONFIG)
    run("curate", "--input", str(work / "raw" / "*.jsonl"), "--output", str(work / "clean"),
        "--config", str(work / "curate.yaml"), "--workers", "2")
    run("curate-report", str(work / "clean"))

    step("3/6 train a byte-level BPE tokenizer on the clean text")
    run("train-tokenizer", "--input", str(work / "clean" / "*.jsonl"), "--model-type", "byte-bpe",
        "--vocab-size", "2048", "--output", str(work / "tok"))

    step("4/6 tokenize into Megatron indexed shards")
    run("preprocess-data", "--input", str(work / "clean" / "*.jsonl"), "--output-prefix", str(work / "shards/corpus"),
        "--tokenizer", str(work / "tok"), "--append-eod", "--workers", "2")
    run("inspect-data", str(work / "shards/corpus_text_document"))

    step("5/6 pre-train the tiny Llama on 2 processes (tensor parallel 2), with checkpoints")
    run_dir = work / "run"
    torchrun = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "megatron_llm"]
    run("train", "--config", "examples/configs/tiny.yaml", "--run-dir", str(run_dir),
        "--set", "parallel.tensor=2", "--set", "model.vocab_size=null",
        "--set", f"data.paths=[{work / 'shards/corpus_text_document'}]", "--set", "data.synthetic=false",
        "--set", f"data.tokenizer={work / 'tok'}", "--set", "data.split=98,2,0",
        "--set", "schedule.train_iters=300", "--set", "schedule.eval_interval=100", "--set", "schedule.eval_iters=4",
        "--set", "optim.warmup_iters=20", "--set", "logging.log_interval=10",
        "--set", "checkpoint.save_interval=100", launcher=torchrun)
    records = metrics(run_dir)
    first = next(r["loss"] for r in records if r.get("loss") is not None)
    val = [r["val_loss"] for r in records if r.get("val_loss") is not None]
    vocab = json.loads((work / "tok" / "megatron_llm_tokenizer.json").read_text())["vocab_size"]
    print(f"loss of a uniform guess ln({vocab}) = {math.log(vocab):.3f}; first logged training loss {first:.3f}")
    print("validation loss: " + " -> ".join(f"{v:.3f}" for v in val))

    step("6/6 export to Hugging Face and generate with transformers")
    run("convert", "to-hf", "--checkpoint", str(run_dir / "checkpoints"), "--output", str(work / "hf"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(work / "hf")
    model = AutoModelForCausalLM.from_pretrained(work / "hf")
    prompt = "Return the number of"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    print(f"prompt: {prompt!r}\ncompletion: {tokenizer.decode(out[0][ids.shape[1]:])!r}")
    print(f"\ndone in {time.time() - started:.0f} s; everything is in {work}")
    if val and val[-1] >= math.log(vocab) - 1.0:
        sys.exit(f"the validation loss did not fall clearly below its start: {val}")


if __name__ == "__main__":
    main()
