"""A curate run SIGKILLed in the middle of steps, rerun with the same command, ends with exactly the output
of an uninterrupted run; half-written files of killed units never reach the next step."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_llm.data.curate.corpus import edit_words, stdlib_chunks

CONFIG = """\
stages:
  - normalize: {collapse_spaces: false}
  - exact_dedup: {}
  - minhash_dedup: {bands: 16, rows: 8}
  - pii: {}
"""
# Each run is killed at the next point; every rerun resumes from what the previous one left behind.
KILL_POINTS = [
    "map-0/part-00001/docs-256",  # temporary files half written
    "exact_dedup.buckets/band-000/before-marker",  # bucket file renamed, marker missing
    "minhash_dedup.buckets/band-005/before-marker",
    "minhash_dedup.clusters/all/before-marker",  # some removal lists written
    "map-2/part-00000/docs-256",  # final output half written
    "finish/all/before-marker",
]


def _curate(root: Path, output: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEGATRON_LLM_CURATE_KILL_AT"}
    if kill_at is not None:
        env["MEGATRON_LLM_CURATE_KILL_AT"] = kill_at
    command = [sys.executable, "-m", "megatron_llm", "curate", "--input", str(root / "raw"),
               "--output", str(root / output), "--config", str(root / "c.yaml")]  # fmt: skip
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _outputs(directory: Path) -> dict[str, bytes]:
    files = [*directory.glob("part-*.jsonl"), *directory.glob("rejects/*"), *directory.glob("stats/*")]
    files.append(directory / "curate.json")
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(files)}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill")
    rng = random.Random(11)
    texts = stdlib_chunks(960)
    vocabulary = sorted({w for t in texts[:50] for w in t.split()})
    texts += [edit_words(t, 0.01, rng, vocabulary) for t in rng.sample(texts, 60)] + rng.sample(texts, 30)
    texts.append("mail me: someone@example.com")
    rng.shuffle(texts)
    (root / "raw").mkdir()
    for f in range(3):
        lines = [json.dumps({"n": i, "text": t}) for i, t in enumerate(texts[f::3])]
        (root / "raw" / f"{f}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "c.yaml").write_text(CONFIG, encoding="utf-8")
    return root


def test_killed_runs_resume_to_the_uninterrupted_output(root):
    reference = _curate(root, "reference")
    assert reference.returncode == 0, reference.stderr
    expected = _outputs(root / "reference")
    assert len(expected) == 3 + 3 + 3 + 1

    out = root / "killed"
    for point in KILL_POINTS:
        killed = _curate(root, "killed", kill_at=point)
        assert killed.returncode == -9, (point, killed.returncode, killed.stderr[-2000:])
        step, unit, _ = point.split("/")
        assert not (out / "_work" / step / "done" / f"{unit}.json").exists()
        if point.startswith("map-0/"):
            partial = list((out / "_work" / "map-0" / "docs").glob(".part-00001.tsv.tmp-*"))
            assert partial and not (out / "_work" / "map-0" / "docs" / "part-00001.tsv").exists()
        if point.startswith("minhash_dedup.buckets/"):
            edges = out / "_work" / "minhash_dedup.buckets" / "band-005.edges.npy"
            edges.write_bytes(edges.read_bytes()[:100])  # as if the writer died mid-file without renaming
        if point.startswith("map-2/"):
            assert not (out / "part-00000.jsonl").exists()
            assert list(out.glob(".part-00000.jsonl.tmp-*"))

    final = _curate(root, "killed")
    assert final.returncode == 0, final.stderr
    assert _outputs(out) == expected
    assert not list(out.glob(".*.tmp-*")), "finish removes temporaries left by killed writers"
