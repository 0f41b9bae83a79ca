"""Suite-wide settings: tests launch many processes on few cores, so each uses one OpenMP thread.

Under pytest-xdist (`make test` runs `-n 2`) each test module is one unit of work, so its module fixtures
(trained runs, exports, servers) are built once, on one worker. tests/slurm and tests/cluster together are one
unit: the localhost SLURM cluster binds fixed ports, and the namespace clusters and reference runs of
tests/cluster are session fixtures built once.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Triton turns every @triton.jit function, its own standard library included, into an interpreted or a compiled
# one when it is imported, and megatron-core imports it: the interpreter (the only way Triton runs on CPU
# tensors, for the kernel tests) has to be chosen before any test module imports megatron-core.
os.environ.setdefault("TRITON_INTERPRET", "1")

SLURM_FOLDERS = ("tests/slurm/", "tests/cluster/")  # node ids start at the repository


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """xdist's scope scheduler with the scopes described above."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "slurm" if path.startswith(SLURM_FOLDERS) else path

    return ModuleScheduling(config, log)
