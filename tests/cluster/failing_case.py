"""Run only by test_cluster.py, in its own pytest: a test that fails while a 2-host job is running.

Not collected by the suite (the name does not start with test_). It records its cluster's namespace prefix
and state directory in $MLT_RECORD so the outer test can look for anything the teardown missed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.slurm.slurm_jobs import wait_until


def test_fails_with_a_job_running_on_both_hosts(cluster):
    Path(os.environ["MLT_RECORD"]).write_text(json.dumps({"prefix": cluster.prefix, "root": str(cluster.root),
                                                          "conf": str(cluster.conf), "sockets": str(cluster.sockets)}))
    result = cluster.run(["sbatch", "--parsable", "-N2", "-n2", f"--output={cluster.root}/job-%j.out",
                          "--wrap", "srun sleep 600"])
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    wait_until(lambda: cluster.run(["squeue", "-h", "-j", job_id, "-s", "-o", "%i"]).stdout.count(".0") == 1,
               180, "the job's srun step to start")
    raise AssertionError("this test fails on purpose, with the job still running")
