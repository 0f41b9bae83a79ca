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
    rng = np.random.default_rng(0)
    with IndexedDatasetWriter(prefix, np.uint16) as writer:
        writer.add_documents(rng.integers(0, high, docs * tokens), np.full(docs, tokens), np.ones(docs, np.int64))
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


CASES = [
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
         r"full/clean.*: no space left on device while writing the curated output under .*full/clean$"),
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
