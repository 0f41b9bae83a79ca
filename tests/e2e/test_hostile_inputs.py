"""Hostile inputs and faults, one row each: the exact exit code, the one-line message, and (where data could
be lost) the hashes of what was there before. Adding a case is adding a row to CASES (or TRAIN_CASES).

A row's `setup(tmp)` writes what the case needs and returns the command line (without `megatron-llm`) and
the files that must come out unchanged. Data commands run in this process through `cli.main` (cheap); the
training rows run `megatron-llm train` as a process, since that is where the rank-0 / exit-code wiring is.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zstandard

from megatron_llm import cli
from megatron_llm.data.shards.indexed_writer import IndexedDatasetWriter
from tests.unit.test_preprocess_corpus import multilingual_documents, train_tokenizer_dir

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys
from megatron_llm.runtime.run_lock import RunLock
lock = RunLock(sys.argv[1], sys.argv[2]).acquire()
print("held", flush=True)
sys.stdin.readline()
"""
CURATE_CONFIG = "text_key: text\nstages:\n  - normalize: {}\n"


@dataclass
class Case:
    name: str
    setup: Callable[[Path, dict], tuple[list[str], list[Path]]]
    code: int
    message: str  # a regular expression the command's stderr must match (re.search)
    absent: list[str] = field(default_factory=list)  # files (relative to tmp) that must not exist afterwards


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def documents(count: int) -> bytes:
    return b"".join(json.dumps({"text": f"document {i} says hello to the world"}).encode() + b"\n"
                    for i in range(count))


def write_shard(prefix: Path, docs: int = 4, tokens: int = 100, high: int = 500) -> Path:
    ids = np.random.default_rng(0).integers(0, high, docs * tokens)
    ids[-1] = high - 1  # the largest id always occurs
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(ids, np.full(docs, tokens), np.ones(docs, np.int64))
        writer.finish()
    return prefix


def hold_lock(env: dict, path: Path, what: str) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), what], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline() == "held\n"
    env["holders"].append(proc)


def preprocess(tmp: Path, env: dict, *inputs: Path, extra: tuple = ()) -> list[str]:
    return ["preprocess-data", "--input", *map(str, inputs), "--output-prefix", str(tmp / "out" / "ds"),
            "--tokenizer", str(env["tokenizer"]), "--workers", "1", *extra]


# --- the cases -----------------------------------------------------------------------------------------

def preprocess_on_a_locked_prefix(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(5))
    hold_lock(env, tmp / "out" / "ds.lock", "preprocess-data run")
    return preprocess(tmp, env, tmp / "in.jsonl"), [tmp / "out" / "ds.lock"]


def curate_on_a_locked_output(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(5))
    (tmp / "c.yaml").write_text(CURATE_CONFIG)
    hold_lock(env, tmp / "clean" / ".curate.lock", "curate run")
    return ["curate", "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "clean"), "--config",
            str(tmp / "c.yaml")], [tmp / "clean" / ".curate.lock"]


def truncated_zstd(tmp, env):
    data = zstandard.ZstdCompressor().compress(documents(3000))
    (tmp / "in.jsonl.zst").write_bytes(data[: len(data) // 2])
    return preprocess(tmp, env, tmp / "in.jsonl.zst"), [tmp / "in.jsonl.zst"]


def truncated_zstd_in_curate(tmp, env):
    data = zstandard.ZstdCompressor().compress(documents(3000))
    (tmp / "in.jsonl.zst").write_bytes(data[: len(data) // 2])
    (tmp / "c.yaml").write_text(CURATE_CONFIG)
    return ["curate", "--input", str(tmp / "in.jsonl.zst"), "--output", str(tmp / "clean"), "--config",
            str(tmp / "c.yaml")], [tmp / "in.jsonl.zst"]


def truncated_gzip(tmp, env):
    data = gzip.compress(documents(3000))
    (tmp / "in.jsonl.gz").write_bytes(data[: len(data) // 2])
    return preprocess(tmp, env, tmp / "in.jsonl.gz"), [tmp / "in.jsonl.gz"]


def every_line_skipped(tmp, env):
    (tmp / "in.jsonl").write_bytes(b'{"body": "x"}\n' * 10)
    return preprocess(tmp, env, tmp / "in.jsonl", extra=("--on-error", "skip")), [tmp / "in.jsonl"]


def curate_every_line_malformed(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(5))
    (tmp / "gz.jsonl").write_bytes(b"\x00not json\n" * 5)
    (tmp / "c.yaml").write_text(CURATE_CONFIG)
    return ["curate", "--input", str(tmp / "in.jsonl"), str(tmp / "gz.jsonl"), "--output", str(tmp / "clean"),
            "--config", str(tmp / "c.yaml")], [tmp / "in.jsonl", tmp / "gz.jsonl"]


def most_lines_skipped(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(2) + b"{broken\n" * 6)
    (tmp / "ok.jsonl").write_bytes(documents(2))
    extra = ("--on-error", "skip", "--max-skipped-fraction", "0.5")
    return preprocess(tmp, env, tmp / "in.jsonl", tmp / "ok.jsonl", extra=extra), []


def merge_truncated_bin(tmp, env):
    write_shard(tmp / "a")
    write_shard(tmp / "b")
    with open(tmp / "b.bin", "r+b") as stream:
        stream.truncate(500)
    return ["merge-shards", "--inputs", str(tmp / "a"), str(tmp / "b"), "--output-prefix", str(tmp / "m")], \
        [tmp / "a.bin", tmp / "b.bin"]


def merge_bad_header(tmp, env):
    write_shard(tmp / "a")
    write_shard(tmp / "b")
    raw = bytearray((tmp / "b.idx").read_bytes())
    raw[:4] = b"JUNK"
    (tmp / "b.idx").write_bytes(bytes(raw))
    return ["merge-shards", "--inputs", str(tmp / "a"), str(tmp / "b"), "--output-prefix", str(tmp / "m")], []


def curate_negative_min_words(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(5))
    (tmp / "c.yaml").write_text("text_key: text\nstages:\n  - quality: {min_words: -5}\n")
    return ["curate", "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "clean"), "--config",
            str(tmp / "c.yaml")], []


def preprocess_read_only_output(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(5))
    (tmp / "ro").mkdir()
    env["mount"](["mount", "--bind", "-o", "ro", str(tmp / "ro"), str(tmp / "ro")], tmp / "ro")
    return ["preprocess-data", "--input", str(tmp / "in.jsonl"), "--output-prefix", str(tmp / "ro" / "ds"),
            "--tokenizer", str(env["tokenizer"]), "--workers", "1"], []


def preprocess_full_disk(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(40000))
    (tmp / "full").mkdir()
    env["mount"](["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmp / "full")], tmp / "full")
    return ["preprocess-data", "--input", str(tmp / "in.jsonl"), "--output-prefix", str(tmp / "full" / "ds"),
            "--tokenizer", str(env["tokenizer"]), "--workers", "1"], []


def curate_full_disk(tmp, env):
    (tmp / "in.jsonl").write_bytes(documents(40000))
    (tmp / "c.yaml").write_text(CURATE_CONFIG)
    (tmp / "full").mkdir()
    env["mount"](["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tmp / "full")], tmp / "full")
    return ["curate", "--input", str(tmp / "in.jsonl"), "--output", str(tmp / "full" / "clean"), "--config",
            str(tmp / "c.yaml")], []


def crafted_checkpoint(tmp: Path, marker: Path) -> Path:
    """An iter_* directory whose `.metadata` runs `touch MARKER` when unpickled, with its sha256 updated in
    megatron_llm.json, as someone handing out a checkpoint could do."""
    from megatron_llm.config.loader import config_to_dict, load_config

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    directory = tmp / "ckpt" / "iter_0000001"
    directory.mkdir(parents=True)
    (directory / ".metadata").write_bytes(pickle.dumps(Payload()))
    (directory / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist",
                                                          "sharded_backend_version": 1, "common_backend": "torch",
                                                          "common_backend_version": 1}))
    files = {name: {"size": (directory / name).stat().st_size,
                    "sha256": hashlib.sha256((directory / name).read_bytes()).hexdigest()}
             for name in (".metadata", "metadata.json")}
    config = config_to_dict(load_config(str(REPO / "examples/configs/tiny.yaml"), []))
    (directory / "megatron_llm.json").write_text(json.dumps({"format_version": 1, "step": 1, "contents": ["model"],
                                                             "config": config, "files": files}))
    (tmp / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1\n")
    return directory


def verify_crafted_checkpoint(tmp, env):
    return ["checkpoint", "verify", str(crafted_checkpoint(tmp, tmp / "pwned"))], []


def convert_crafted_checkpoint(tmp, env):
    directory = crafted_checkpoint(tmp, tmp / "pwned")
    return ["convert", "to-hf", "--checkpoint", str(directory), "--output", str(tmp / "hf")], []


def from_hf_truncated_safetensors(tmp, env):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(tmp / "hf", max_shard_size="100KB")
    shard = sorted((tmp / "hf").glob("model-*.safetensors"))[0]
    with open(shard, "r+b") as stream:
        stream.truncate(shard.stat().st_size // 2)
    return ["convert", "from-hf", "--hf", str(tmp / "hf"), "--output", str(tmp / "ckpt")], [shard]


def truncated_tokenizer_json(tmp, env):
    import shutil

    shutil.copytree(env["tokenizer"], tmp / "tok")
    model = tmp / "tok" / "tokenizer.json"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    (tmp / "in.jsonl").write_bytes(documents(5))
    return ["preprocess-data", "--input", str(tmp / "in.jsonl"), "--output-prefix", str(tmp / "out" / "ds"),
            "--tokenizer", str(tmp / "tok")], [model]


CASES = [
    Case("a truncated tokenizer.json", truncated_tokenizer_json, 2,
         r"tok/tokenizer\.json: not a readable hf tokenizer model \(truncated or corrupt\?\)",
         absent=["out/ds_text_document.bin"]),
    Case("preprocess on a locked output prefix", preprocess_on_a_locked_prefix, 2,
         r"out: in use by another preprocess-data run \(pid \d+ on host .*lock file .*ds\.lock\)$"),
    Case("curate on a locked output directory", curate_on_a_locked_output, 2,
         r"clean: in use by another curate run \(pid \d+ on host "),
    Case("truncated .jsonl.zst", truncated_zstd, 2,
         r"in\.jsonl\.zst: truncated or corrupt zstd stream at compressed byte \d+ of \d+: premature end",
         absent=["out/ds_text_document.bin"]),
    Case("truncated .jsonl.zst in curate", truncated_zstd_in_curate, 2,
         r"in\.jsonl\.zst: truncated or corrupt zstd stream at compressed byte \d+ of \d+"),
    Case("truncated .jsonl.gz", truncated_gzip, 2,
         r"in\.jsonl\.gz: truncated or corrupt gzip stream at compressed byte \d+ of \d+: Compressed file ended",
         absent=["out/ds_text_document.bin"]),
    Case("every line of a file skipped", every_line_skipped, 2,
         r"in\.jsonl: all 10 lines were skipped as malformed", absent=["out/ds_text_document.idx"]),
    Case("curate: every line of a file malformed", curate_every_line_malformed, 2,
         r"gz\.jsonl: all 5 lines were malformed \(is it the right file, format and text_key\?\)$"),
    Case("more than --max-skipped-fraction skipped", most_lines_skipped, 2,
         r"error: 6 of 10 lines were skipped as malformed, more than --max-skipped-fraction 0.5$"),
    Case("merge-shards with a truncated .bin", merge_truncated_bin, 2,
         r"b\.bin: 500 bytes, the index describes 800 \(truncated\)$", absent=["m.bin", "m.idx"]),
    Case("merge-shards with a bad .idx header", merge_bad_header, 2,
         r"b\.idx: not a Megatron indexed dataset index \(bad header\)$", absent=["m.bin", "m.idx"]),
    Case("curate quality.min_words: -5", curate_negative_min_words, 2, r"min_words: must be >= 0, got -5"),
    Case("preprocess onto a read-only directory", preprocess_read_only_output, 2,
         r"ro/ds\.lock: cannot create the lock file \(Read-only file system\)$"),
    Case("preprocess onto a full disk", preprocess_full_disk, 2,
         r"no space left on device while writing the tokenized shards .*full/ds_\*_document\.bin/\.idx$",
         absent=["full/ds_text_document.bin", "full/ds_text_document.idx"]),
    Case("curate onto a full disk", curate_full_disk, 2,
         r"full/clean\S*: no space left on device while writing the curated output under .*full/clean \(completed "
         r"units are kept: free space and run the same command again to resume\)$"),
    Case("from-hf with a truncated .safetensors shard", from_hf_truncated_safetensors, 2,
         r"model-\S+\.safetensors: not a readable safetensors file \(Error while deserializing header"),
    Case("checkpoint verify of a crafted .metadata", verify_crafted_checkpoint, 2,
         r"\.metadata: refusing to load: it asks for posix\.system"),
    Case("convert to-hf of a crafted .metadata", convert_crafted_checkpoint, 2,
         r"\.metadata: refusing to load: it asks for posix\.system", absent=["pwned", "hf"]),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer_dir(tmp_path_factory.mktemp("tok") / "tok", "byte-bpe", multilingual_documents(200), 400)


@pytest.fixture
def env(tokenizer):
    mounts: list[Path] = []

    def mount(command: list[str], target: Path) -> None:
        subprocess.run(command, check=True)
        mounts.append(target)

    state = {"tokenizer": tokenizer, "holders": [], "mount": mount}
    yield state
    for proc in state["holders"]:
        proc.kill()
        proc.wait()
    for target in reversed(mounts):
        subprocess.run(["umount", "-l", str(target)], check=True)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case, tmp_path, env, capsys):
    argv, kept = case.setup(tmp_path, env)
    before = digest(kept)
    capsys.readouterr()  # what the setup printed
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == case.code, err
    assert len(err.strip().splitlines()) == 1 or "warning" in err, err  # one line, not a traceback
    assert re.search(case.message, err.strip()), err
    assert digest(kept) == before
    for name in case.absent:
        assert not (tmp_path / name).exists(), name
    assert not (tmp_path / "pwned").exists()


def test_the_crafted_metadata_does_run_under_plain_pickle(tmp_path):
    """Negative control for the crafted-checkpoint rows: the same file executes under an unrestricted read."""
    directory = crafted_checkpoint(tmp_path, tmp_path / "pwned")
    with open(directory / ".metadata", "rb") as stream:
        pickle.load(stream)
    assert (tmp_path / "pwned").exists()


def test_a_gzip_file_named_jsonl_is_read_by_its_magic_bytes(tmp_path, env, capsys):
    (tmp_path / "in.jsonl").write_bytes(gzip.compress(documents(50)))
    (tmp_path / "plain.jsonl").write_bytes(documents(50))
    assert cli.main(preprocess(tmp_path, env, tmp_path / "in.jsonl")) == 0
    compressed = (tmp_path / "out" / "ds_text_document.bin").read_bytes()
    assert "documents written 50" in capsys.readouterr().out
    assert cli.main(preprocess(tmp_path, env, tmp_path / "plain.jsonl")) == 0
    assert (tmp_path / "out" / "ds_text_document.bin").read_bytes() == compressed


def test_an_empty_input_file_is_warned_about(tmp_path, env, capsys):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert cli.main(preprocess(tmp_path, env, tmp_path / "empty.jsonl")) == 0
    err = capsys.readouterr().err
    assert f"warning: {tmp_path / 'empty.jsonl'} is empty" in err and "the output holds no documents" in err


def test_checkpoint_ls_says_unverified_until_verified(tmp_path, capsys):
    directory = tmp_path / "ckpt" / "iter_0000001"
    directory.mkdir(parents=True)
    (directory / "__0_0.distcp").write_bytes(b"weights" * 100)
    files = {"__0_0.distcp": {"size": 700, "sha256": hashlib.sha256(b"weights" * 100).hexdigest()}}
    (directory / "megatron_llm.json").write_text(json.dumps({"step": 1, "contents": ["model"], "files": files}))
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("1\n")
    assert cli.main(["checkpoint", "ls", str(tmp_path / "ckpt"), "--verify"]) == 0
    assert "verified (latest)" in capsys.readouterr().out
    raw = bytearray((directory / "__0_0.distcp").read_bytes())
    raw[10] ^= 0xFF  # flipped bytes, same size
    (directory / "__0_0.distcp").write_bytes(bytes(raw))
    assert cli.main(["checkpoint", "ls", str(tmp_path / "ckpt")]) == 0
    out = capsys.readouterr().out
    assert "unverified (latest)" in out and " complete" not in out
    assert cli.main(["checkpoint", "ls", str(tmp_path / "ckpt"), "--verify"]) == 1
    assert "DAMAGED (latest)" in capsys.readouterr().out


# --- cases that need a training start (one `megatron-llm train` process each) ----------------------------

TRAIN_BASE = ["schedule.train_iters=2", "optim.warmup_iters=1", "logging.progress=false", "data.synthetic=false",
              "schedule.eval_iters=1", "schedule.global_batch_size=2", "schedule.micro_batch_size=1"]


def train_on_a_locked_run_dir(tmp, env):
    run = tmp / "run"
    run.mkdir()
    (run / "config.yaml").write_text("the first run's config\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 6.0}\n')
    hold_lock(env, run / "megatron_llm.lock", "training run")
    return ["--set", f"data.paths=[{write_shard(tmp / 'ok')}]"], [run / "config.yaml", run / "metrics.jsonl"]


def train_beyond_the_vocabulary(tmp, env):
    return ["--set", f"data.paths=[{write_shard(tmp / 'wide', high=540)}]"], []


def train_on_a_truncated_shard(tmp, env):
    prefix = write_shard(tmp / "cut")
    with open(f"{prefix}.bin", "r+b") as stream:
        stream.truncate(300)
    return ["--set", f"data.paths=[{prefix}]"], [Path(f"{prefix}.bin")]


def train_on_an_empty_shard(tmp, env):
    with IndexedDatasetWriter(tmp / "empty", np.uint16) as writer:
        writer.finish()
    return ["--set", f"data.paths=[{tmp / 'empty'}]"], []


def train_with_an_empty_valid_split(tmp, env):
    return ["--set", f"data.paths=[{write_shard(tmp / 'few', docs=20, tokens=30)}]", "--set", "data.split=99,1,0"], []


TRAIN_CASES = [
    Case("two trainings on one run directory", train_on_a_locked_run_dir, 2,
         r"run: in use by another training run \(pid \d+ on host .*; wait for it to finish or use another directory"),
    Case("token ids beyond model.vocab_size", train_beyond_the_vocabulary, 2,
         r"wide\.bin: holds token id 539, but model\.vocab_size=512 admits ids up to 511"),
    Case("a truncated shard", train_on_a_truncated_shard, 2, r"cut\.bin: 300 bytes, the index describes 800"),
    Case("an empty shard", train_on_an_empty_shard, 2, r"empty\.bin: the dataset holds no tokens \(0 documents\)"),
    Case("a split too small to hold a sample", train_with_an_empty_valid_split, 2,
         r"data\.split='99,1,0': the valid split of .*few gets 0 of 20 documents \(0 tokens\), fewer than one "
         r"sample of 65 tokens; data\.split='87,13,0' would work"),
]


def run_train(tmp: Path, args: list[str], overrides: list[str] = TRAIN_BASE) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "megatron_llm", "train", "--config", "examples/configs/tiny.yaml",
               "--run-dir", str(tmp / "run")]
    for override in overrides:
        command += ["--set", override]
    return subprocess.run(command + args, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("case", TRAIN_CASES, ids=[case.name for case in TRAIN_CASES])
def test_hostile_training_start(case, tmp_path, env):
    args, kept = case.setup(tmp_path, env)
    before = digest(kept)
    result = run_train(tmp_path, args)
    errors = [line for line in result.stderr.splitlines() if line.startswith("megatron-llm train: error:")]
    assert result.returncode == case.code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr[-3000:]
    assert re.search(case.message, errors[0]), errors[0]
    assert digest(kept) == before


def test_a_checkpoint_save_onto_a_full_disk(tmp_path, env):
    """The first checkpoint fits the 5 MB file system, the second does not: a warning before it, one line naming
    the directory when it fails, the partial save removed, the first checkpoint intact and still the latest."""
    from megatron_llm.training.checkpoint.format import read_tracker, verify_directory

    (tmp_path / "full").mkdir()
    env["mount"](["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(tmp_path / "full")], tmp_path / "full")
    root = tmp_path / "full" / "ckpt"
    result = run_train(tmp_path, [], ["schedule.train_iters=3", "optim.warmup_iters=1", "logging.progress=false",
                                      "schedule.eval_iters=0", "checkpoint.save_interval=1", f"checkpoint.dir={root}"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert re.search(r"warning: .*ckpt has \d\.\d MB free, the checkpoint of step 2 needs about 3\.\d MB",
                     result.stderr), result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if line.startswith("megatron-llm train: error:")]
    assert len(error) == 1 and re.search(r"iter_0000002: no space left on device while writing the checkpoint of "
                                         r"step 2 .*; the latest complete checkpoint is still .*iter_0000001$",
                                         error[0]), error
    assert sorted(p.name for p in root.iterdir()) == ["iter_0000001", "latest_checkpointed_iteration.txt"]
    assert read_tracker(root) == 1 and verify_directory(root / "iter_0000001", deep=True) == []
