"""Session fixture: a real SLURM cluster on 127.0.0.1 (installed from Debian's packages when missing)."""

from __future__ import annotations

import os

import pytest

from tests.slurm.slurm_cluster import ClusterError, LocalSlurm, ensure_installed


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """munged + slurmctld + slurmd for the whole session; SLURM_CONF points every client command at it."""
    cluster = LocalSlurm(tmp_path_factory.mktemp("slurm"))
    try:
        ensure_installed()
        cluster.start()
    except ClusterError as error:
        cluster.stop()
        pytest.fail(f"cannot run the SLURM tests: {error}", pytrace=False)
    saved = {key: os.environ.get(key) for key in cluster.env}
    os.environ.update(cluster.env)
    try:
        yield cluster
    finally:
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
