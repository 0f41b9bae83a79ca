"""Fixtures: SLURM clusters of 2 and 3 hosts made of network namespaces, torn down (and checked) after use."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cluster.jobs import LAYOUTS, SETTINGS, job_log, submit_pretrain, train_here, wait_final
from tests.cluster.netns_cluster import NamespaceCluster
from tests.slurm.slurm_cluster import ClusterError, ensure_installed


def running(cluster: NamespaceCluster):
    """Start `cluster`, yield it, and always stop it; fail the test if anything survives the stop."""
    try:
        ensure_installed()
        ensure_installed(("iproute2", "util-linux"), ("ip", "nsenter", "unshare"))
        cluster.start()
    except ClusterError as error:
        cluster.stop()
        pytest.fail(f"cannot start the {cluster.hosts}-host cluster: {error}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        assert not left, f"the cluster's teardown left behind: {left}"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Two hosts, node1 and node2, for the whole session."""
    yield from running(NamespaceCluster(tmp_path_factory.mktemp("cluster2"), hosts=2))


@pytest.fixture
def cluster3(tmp_path_factory):
    """Three hosts, for the test that loses one and carries on with the other two."""
    yield from running(NamespaceCluster(tmp_path_factory.mktemp("cluster3"), hosts=3))


@pytest.fixture(scope="session")
def single_process(tmp_path_factory) -> dict[int, float]:
    """step -> loss of the one-process run every multi-host layout must reproduce."""
    return train_here(tmp_path_factory.mktemp("single"), SETTINGS)


@pytest.fixture(scope="session")
def uninterrupted(cluster, tmp_path_factory) -> tuple[Path, str]:
    """TP=2 in a host, DP=2 across the two hosts, through `slurm submit`, never interrupted: the run whose
    losses every interrupted and resumed run must reproduce exactly. Returns (run dir, job id)."""
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    job_id = submit_pretrain(cluster, run_dir, 2, 2, [*SETTINGS, *LAYOUTS["tp2-dp2"]])
    fields = wait_final(cluster, job_id, 600, run_dir / "slurm" / f"slurm-{job_id}.out")
    assert fields["JobState"] == "COMPLETED", job_log(run_dir, job_id)[-4000:]
    assert fields["NodeList"] == "node[1-2]" and fields["NumTasks"] == "4"
    return run_dir, job_id
