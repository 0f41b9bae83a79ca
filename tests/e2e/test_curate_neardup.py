"""Near-dedup on planted near-duplicates of real text: precision and recall against exact Jaccard, and the
same output from one process, four shards in any order, explicit steps, and a worker pool."""

from __future__ import annotations

import itertools
import json
import random
import re
from pathlib import Path

import pytest

from megatron_llm.data.curate import command
from megatron_llm.data.curate.corpus import planted_corpus, stdlib_docstrings

THRESHOLD = 0.8
FILES = 6
RATES = [0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.15, 0.2]  # word-edit rates of the planted copies
CONFIG = "stages:\n  - exact_dedup: {}\n  - minhash_dedup: {ngram: 5, num_perm: 128, bands: 16, rows: 8}\n"


def _shingles(text: str) -> set:
    """Word 5-grams by an independent route (Python's regex), for the ground truth."""
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 5]) for i in range(max(1, len(words) - 4))}


def _jaccard(a: str, b: str) -> float:
    x, y = _shingles(a), _shingles(b)
    return len(x & y) / len(x | y)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("neardup")
    planted = planted_corpus(stdlib_docstrings(1000, min_chars=300), copied=400, rates=RATES, seed=7)
    raw = root / "raw"
    raw.mkdir()
    for f in range(FILES):
        with open(raw / f"docs-{f}.jsonl", "w", encoding="utf-8") as handle:
            for i in range(f, len(planted.texts), FILES):
                handle.write(json.dumps({"doc": i, "text": planted.texts[i]}) + "\n")
    (root / "near.yaml").write_text(CONFIG, encoding="utf-8")
    return root, planted


def _args(root: Path, output: str, *extra: str) -> list[str]:
    return ["--input", str(root / "raw"), "--output", str(root / output), "--config", str(root / "near.yaml"), *extra]


def _outputs(directory: Path) -> dict[str, bytes]:
    files = [*directory.glob("part-*.jsonl"), *directory.glob("rejects/*"), *directory.glob("stats/*")]
    files.append(directory / "curate.json")
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(files)}


@pytest.fixture(scope="module")
def single(corpus):
    root, _ = corpus
    assert command.main(_args(root, "single")) == 0
    return _outputs(root / "single")


def test_precision_and_recall_against_exact_jaccard(corpus, single):
    root, planted = corpus
    line_of = {}
    for f in range(FILES):
        path = root / "raw" / f"docs-{f}.jsonl"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            line_of[f"{path}:{number}"] = json.loads(line)["doc"]
    clusters: dict[int, set[int]] = {}
    for name, data in single.items():
        if name.startswith("rejects/"):
            for line in data.decode().splitlines():
                record = json.loads(line)
                kept = line_of[record["duplicate_of"]]
                clusters.setdefault(kept, {kept}).add(record["doc"]["doc"])
    predicted = {pair for members in clusters.values() for pair in itertools.combinations(sorted(members), 2)}
    truth = set()
    for family in planted.families:
        for a, b in itertools.combinations(sorted(family), 2):
            if _jaccard(planted.texts[a], planted.texts[b]) >= THRESHOLD:
                truth.add((a, b))
    correct = sum(_jaccard(planted.texts[a], planted.texts[b]) >= THRESHOLD for a, b in predicted)
    precision = correct / len(predicted)
    recall = len(truth & predicted) / len(truth)
    print(f"near-dedup: precision {precision:.3f} ({len(predicted)} pairs), recall {recall:.3f} ({len(truth)} pairs)")
    assert len(truth) >= 100, "the planted corpus should hold enough pairs above the threshold"
    assert precision >= 0.95, (precision, len(predicted))
    assert recall >= 0.90, (recall, len(truth))


def test_four_shards_in_any_order_give_the_same_output(corpus, single):
    root, _ = corpus
    rng = random.Random(3)
    rounds = 0
    while not (root / "sharded" / "curate.json").exists():
        rounds += 1
        assert rounds <= 12, "the shards should finish within a few rounds"
        order = list(range(4))
        rng.shuffle(order)
        for index in order:
            assert command.main(_args(root, "sharded", "--shard", f"{index}/4")) == 0
    assert _outputs(root / "sharded") == single


def test_explicit_steps_in_reverse_shard_order_give_the_same_output(corpus, single, capsys):
    root, _ = corpus
    assert command.main(["--config", str(root / "near.yaml"), "--list-steps", "--input", str(root / "raw")]) == 0
    steps = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert [name for name, _, _ in steps][-2:] == ["map-2", "finish"]
    for name, kind, _ in steps:
        if kind == "parallel":
            for index in reversed(range(4)):
                assert command.main(_args(root, "stepped", "--step", name, "--shard", f"{index}/4")) == 0
        else:
            assert command.main(_args(root, "stepped", "--step", name)) == 0
    assert _outputs(root / "stepped") == single


def test_a_step_before_its_inputs_are_complete_is_refused(corpus):
    root, _ = corpus
    from megatron_llm.errors import UsageError

    with pytest.raises(UsageError, match="map-0 is not complete"):
        command.main(_args(root, "early", "--step", "exact_dedup.buckets"))


def test_worker_pool_gives_the_same_output(corpus, single):
    root, _ = corpus
    assert command.main(_args(root, "pooled", "--workers", "2")) == 0
    assert _outputs(root / "pooled") == single


def test_bucket_partitions_do_not_change_the_result(corpus, single):
    root, _ = corpus
    config = root / "partitioned.yaml"
    config.write_text(
        CONFIG.replace("exact_dedup: {}", "exact_dedup: {partitions: 2}").replace("rows: 8}", "rows: 8, partitions: 3}")
    )
    out = root / "partitioned"
    assert command.main(["--input", str(root / "raw"), "--output", str(out), "--config", str(config)]) == 0
    outputs = _outputs(out)
    assert {k: v for k, v in outputs.items() if k != "curate.json"} == {
        k: v for k, v in single.items() if k != "curate.json"
    }
