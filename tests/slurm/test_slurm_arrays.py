"""preprocess_array.sbatch on a real SLURM cluster: 4 array elements, then a dependent merge job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.slurm_jobs import REPO, cli, job, job_records, wait_final

TEMPLATES = REPO / "megatron_llm" / "launch" / "templates"

LAUNCHER = f"{sys.executable} -m megatron_llm"


def write_corpus(directory: Path) -> list[Path]:
    """Two JSONL files of real text: the paragraphs of a few standard-library modules' source."""
    import email
    import json as json_module
    import logging

    directory.mkdir(parents=True)
    files = []
    for index, module in enumerate((logging, email, json_module)):
        root = Path(module.__file__).parent
        paragraphs = [p.strip() for source in sorted(root.glob("*.py"))
                      for p in source.read_text().split("\n\n") if p.strip()]
        path = directory / f"part{index}.jsonl"
        path.write_text("".join(json.dumps({"text": p}) + "\n" for p in paragraphs[:400]))
        files.append(path)
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """The corpus directory and a byte-level BPE tokenizer trained on it."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root / "jsonl")
    result = cli("train-tokenizer", "--input", str(root / "jsonl"), "--model-type", "byte-bpe",
                 "--vocab-size", "400", "--output", str(root / "tokenizer"))
    assert result.returncode == 0, result.stderr
    return root / "jsonl", root / "tokenizer"


def test_preprocess_array_and_dependent_merge_equal_a_single_run(slurm_cluster, corpus, tmp_path):
    inputs, tokenizer = corpus
    args = ["--input", str(inputs), "--tokenizer", str(tokenizer), "--append-eod"]
    single = cli("preprocess-data", *args, "--output-prefix", str(tmp_path / "single" / "web"))
    assert single.returncode == 0, single.stderr

    prefix = tmp_path / "array" / "web"
    submitted = subprocess.run(["bash", str(TEMPLATES / "preprocess_array.sbatch"), "4",
                                str(prefix), *args], capture_output=True, text=True, cwd=tmp_path,
                               env={**os.environ, "MEGATRON_LLM": LAUNCHER}, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    found = re.fullmatch(r"array job (\d+) \(4 shards\), merge job (\d+)\n", submitted.stdout)
    assert found, submitted.stdout
    array_id, merge_id = found.groups()
    assert job(merge_id)["Dependency"].startswith(f"afterok:{array_id}")

    merged = wait_final(merge_id, 240, prefix.parent / "web.shards" / "logs" / f"merge-{merge_id}.out")
    logs = "\n".join(p.read_text() for p in sorted((prefix.parent / "web.shards" / "logs").glob("*.out")))
    assert merged["JobState"] == "COMPLETED", logs[-3000:]
    for element in range(4):
        fields = job(f"{array_id}_{element}")
        assert fields["JobState"] == "COMPLETED" and fields["ArrayTaskId"] == str(element)
    shards = sorted((prefix.parent / "web.shards").glob("part_*_text_document.bin"))
    assert len(shards) == 4 and all(path.stat().st_size > 0 for path in shards)
    for suffix in (".bin", ".idx"):
        expected = (tmp_path / "single" / f"web_text_document{suffix}").read_bytes()
        assert (prefix.parent / f"web_text_document{suffix}").read_bytes() == expected


def test_curate_chain_of_array_jobs_equals_a_single_process_run(slurm_cluster, tmp_path):
    write_corpus(tmp_path / "raw")
    args = ["--config", str(REPO / "examples" / "curate" / "web.yaml"), "--input", str(tmp_path / "raw")]
    single = cli("curate", *args, "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr

    submitted = subprocess.run(["bash", str(TEMPLATES / "curate_array.sbatch"), "2", *args,
                                "--output", str(tmp_path / "chain")], capture_output=True, text=True,
                               cwd=tmp_path, env={**os.environ, "MEGATRON_LLM": LAUNCHER}, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    jobs = re.findall(r"^(\S+): job (\d+) \((parallel|single)\)$", submitted.stdout, re.MULTILINE)
    listed = cli("curate", *args, "--list-steps").stdout.splitlines()
    assert [(step, mode) for step, _, mode in jobs] == [tuple(line.split("\t")[:2]) for line in listed]
    assert job(jobs[-1][1])["Dependency"].startswith(f"afterok:{jobs[-2][1]}")

    final = wait_final(jobs[-1][1], 300)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "chain.slurm").glob("*.out")))
    assert final["JobState"] == "COMPLETED", logs[-3000:]
    for (_, previous, _), (_, current, _) in zip(jobs, jobs[1:]):
        assert min(r["StartTime"] for r in job_records(current)) >= max(r["EndTime"] for r in job_records(previous))
        assert all(r["JobState"] == "COMPLETED" for r in job_records(current))
    kept = sorted(path.name for path in (tmp_path / "single").glob("part-*.jsonl"))
    assert kept and kept == sorted(path.name for path in (tmp_path / "chain").glob("part-*.jsonl"))
    for name in kept:
        assert (tmp_path / "chain" / name).read_text() == (tmp_path / "single" / name).read_text()
