"""The preprocess and curate array jobs spread over two hosts: each element on its own host (exclusive
allocations), the merged result byte-identical to one process on this machine."""

from __future__ import annotations

import re
from pathlib import Path

from tests.cluster.jobs import LAUNCHER, job, wait_final
from tests.cluster.netns_cluster import NamespaceCluster
from tests.slurm.slurm_jobs import REPO, cli
from tests.slurm.test_slurm_arrays import write_corpus

TEMPLATES = REPO / "megatron_llm" / "launch" / "templates"
# One element per host: an exclusive allocation takes a whole host, so the two elements run side by side.
SPREAD = {"MEGATRON_LLM": LAUNCHER, "SBATCH_ARGS": "--exclusive"}


def element_hosts(cluster: NamespaceCluster, array_id: str, elements: int) -> list[str]:
    return [job(cluster, f"{array_id}_{index}")["BatchHost"] for index in range(elements)]


def test_preprocess_array_elements_on_two_hosts_merge_to_the_single_process_result(cluster: NamespaceCluster,
                                                                                   tmp_path: Path):
    write_corpus(tmp_path / "jsonl")
    trained = cli("train-tokenizer", "--input", str(tmp_path / "jsonl"), "--model-type", "byte-bpe",
                  "--vocab-size", "400", "--output", str(tmp_path / "tokenizer"))
    assert trained.returncode == 0, trained.stderr
    args = ["--input", str(tmp_path / "jsonl"), "--tokenizer", str(tmp_path / "tokenizer"), "--append-eod"]
    single = cli("preprocess-data", *args, "--output-prefix", str(tmp_path / "single" / "web"))
    assert single.returncode == 0, single.stderr

    prefix = tmp_path / "array" / "web"
    submitted = cluster.run(["bash", str(TEMPLATES / "preprocess_array.sbatch"), "2", str(prefix), *args],
                            cwd=tmp_path, env=SPREAD)
    assert submitted.returncode == 0, submitted.stderr
    array_id, merge_id = re.fullmatch(r"array job (\d+) \(2 shards\), merge job (\d+)\n", submitted.stdout).groups()
    merged = wait_final(cluster, merge_id, 600, prefix.parent / "web.shards" / "logs" / f"merge-{merge_id}.out")
    logs = "\n".join(p.read_text() for p in sorted((prefix.parent / "web.shards" / "logs").glob("*.out")))
    assert merged["JobState"] == "COMPLETED", logs[-3000:]
    assert sorted(element_hosts(cluster, array_id, 2)) == ["node1", "node2"]
    for suffix in (".bin", ".idx"):
        expected = (tmp_path / "single" / f"web_text_document{suffix}").read_bytes()
        assert (prefix.parent / f"web_text_document{suffix}").read_bytes() == expected


def test_curate_array_chain_on_two_hosts_equals_a_single_process_run(cluster: NamespaceCluster, tmp_path: Path):
    shards = 2
    write_corpus(tmp_path / "raw")
    args = ["--config", str(REPO / "examples" / "curate" / "web.yaml"), "--input", str(tmp_path / "raw")]
    single = cli("curate", *args, "--output", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr

    submitted = cluster.run(["bash", str(TEMPLATES / "curate_array.sbatch"), str(shards), *args,
                             "--output", str(tmp_path / "chain")], cwd=tmp_path, env=SPREAD)
    assert submitted.returncode == 0, submitted.stderr
    jobs = re.findall(r"^(\S+): job (\d+) \((parallel|single)\)$", submitted.stdout, re.MULTILINE)
    final = wait_final(cluster, jobs[-1][1], 900)
    logs = "\n".join(p.read_text() for p in sorted((tmp_path / "chain.slurm").glob("*.out")))
    assert final["JobState"] == "COMPLETED", logs[-3000:]
    for _, job_id, mode in jobs:
        if mode == "parallel":
            assert sorted(element_hosts(cluster, job_id, shards)) == ["node1", "node2"], job_id
    kept = sorted(path.name for path in (tmp_path / "single").glob("part-*.jsonl"))
    assert kept and kept == sorted(path.name for path in (tmp_path / "chain").glob("part-*.jsonl"))
    for name in kept:
        assert (tmp_path / "chain" / name).read_bytes() == (tmp_path / "single" / name).read_bytes()
