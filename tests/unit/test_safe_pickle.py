"""A checkpoint's pickled parts are read through an allow-list: a genuine file loads exactly as plain
pickle/torch.load would read it; a crafted one is refused with exit 2 and runs nothing (the negative control
shows the same file does run its command under the unrestricted readers torch and megatron-core use)."""

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from megatron_llm.training.checkpoint.safe_pickle import (
    SafeFileSystemReader,
    UnsafeCheckpointError,
    load_dcp_metadata,
    safe_torch_load,
)

REPO = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_payload(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


@pytest.fixture
def genuine(tmp_path) -> Path:
    """A real torch.distributed.checkpoint directory (tensors and a serialized object), written by torch."""
    state = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "blob": {"step": 7, "name": "x"}}
    dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"), no_dist=True)
    return tmp_path / "ckpt"


def test_genuine_metadata_loads_as_pickle_reads_it(genuine):
    with open(genuine / ".metadata", "rb") as stream:
        reference = pickle.load(stream)
    ours = load_dcp_metadata(genuine / ".metadata")
    assert ours == reference
    reader = SafeFileSystemReader(str(genuine))
    target = {"weight": torch.zeros(3, 4), "blob": {}}
    dcp.load(target, storage_reader=reader, no_dist=True)
    assert torch.equal(target["weight"], torch.arange(12, dtype=torch.float32).reshape(3, 4))


def test_crafted_metadata_is_refused_and_runs_nothing(genuine, tmp_path):
    marker = tmp_path / "pwned"
    write_payload(genuine / ".metadata", marker)
    with pytest.raises(UnsafeCheckpointError) as refused:
        load_dcp_metadata(genuine / ".metadata")
    assert "posix.system" in str(refused.value) and str(genuine / ".metadata") in str(refused.value)
    with pytest.raises(CheckpointException, match="refusing to load"):
        dcp.load({"weight": torch.zeros(3, 4)}, storage_reader=SafeFileSystemReader(str(genuine)), no_dist=True)
    assert not marker.exists()
    # Negative control: torch's own FileSystemReader runs the payload.
    with pytest.raises(CheckpointException, match="storage_meta"):  # os.system returned an int, not Metadata
        dcp.load({"weight": torch.zeros(3, 4)}, storage_reader=dcp.FileSystemReader(str(genuine)), no_dist=True)
    assert marker.exists()


def test_common_state_and_rng_objects_load_weights_only(tmp_path):
    import random

    state = {"iteration": 3, "np": np.random.get_state(), "random": random.getstate(), "torch": torch.get_rng_state()}
    torch.save(state, tmp_path / "common.pt")
    loaded = safe_torch_load(tmp_path / "common.pt")
    assert loaded["iteration"] == 3 and loaded["random"] == state["random"]
    assert np.array_equal(loaded["np"][1], state["np"][1]) and torch.equal(loaded["torch"], state["torch"])
    marker = tmp_path / "pwned"
    torch.save({"x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeCheckpointError) as refused:
        safe_torch_load(tmp_path / "evil.pt")
    assert "refusing to load" in str(refused.value) and not marker.exists()
    torch.load(tmp_path / "evil.pt", weights_only=False)  # negative control: megatron-core's unrestricted read
    assert marker.exists()


WORKER = r"""
import os, sys, torch
from pathlib import Path
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing import ShardedObject, ShardedTensor
from megatron_llm.runtime.cpu_compat import install_cpu_compat
from megatron_llm.training.checkpoint.safe_pickle import safe_load_strategies
install_cpu_compat()
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
torch.distributed.init_process_group("gloo", rank=0, world_size=1)
directory = Path(sys.argv[1])
def request(weight, rng):
    return {"w": ShardedTensor.from_rank_offsets("w", weight), "rng": ShardedObject("rng", rng, (1,), (0,)),
            "iteration": 5}
if sys.argv[3] == "save-load":
    directory.mkdir()
    import numpy as np
    dist_checkpointing.save(request(torch.arange(6.0), {"np": np.random.RandomState(3).get_state()}), str(directory))
sharded, common = safe_load_strategies()
try:
    loaded = dist_checkpointing.load(request(torch.zeros(6), None), str(directory), sharded_strategy=sharded,
                                     common_strategy=common)
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
    sys.exit(2)
print(loaded["w"].tolist(), loaded["iteration"], int(loaded["rng"]["np"][1][0]))
"""


def _worker(directory: Path, action: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", WORKER, str(directory), str(port), action], capture_output=True,
                          text=True, cwd=REPO, timeout=600)


def test_megatron_core_load_goes_through_the_allow_list(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tmp_path / "iter_0000005"
    loaded = _worker(directory, "save-load", port)
    first_key = np.random.RandomState(3).get_state()[1][0]
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert loaded.stdout.split("\n")[-2] == f"[0.0, 1.0, 2.0, 3.0, 4.0, 5.0] 5 {first_key}"
    marker = tmp_path / "pwned"
    write_payload(directory / ".metadata", marker)
    refused = _worker(directory, "load", port)
    assert refused.returncode == 2 and "UnsafeCheckpointError" in refused.stdout and "posix.system" in refused.stdout
    assert not marker.exists()
