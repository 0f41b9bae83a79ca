"""Read a checkpoint's pickled parts without letting the file run code.

torch.distributed.checkpoint stores its `.metadata` with plain `pickle`, and its default load planner reads
serialized objects (megatron-core's ShardedObjects: our RNG states) with `torch.load(weights_only=False)`.
Either runs whatever a crafted file asks for. Every such read here goes through an allow-list instead:

- `.metadata`: `RestrictedUnpickler` admits only the classes torch's checkpoint metadata consists of
  (`torch.distributed.checkpoint.{metadata,planner,filesystem}` dataclasses and enums, `torch.Size`,
  torch dtypes and layouts, POSIX paths) and a few builtin containers.
- `common.pt` and serialized objects: `torch.load(weights_only=True)`, with numpy arrays admitted (the
  numpy RNG state is an array), nothing else.

`safe_load_strategies()` gives megatron-core's `dist_checkpointing.load` a sharded and a common strategy
doing exactly megatron-core's torch_dist load but through these readers. A refused file is a
`CheckpointError` (exit 2) naming the file and the class it asked for, and nothing in it runs.

The sha256 sums in `megatron_llm.json` detect corruption, not tampering: whoever can replace a file can
rewrite its sum. This module is what makes a tampered checkpoint harmless to load.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.distributed.checkpoint import FileSystemReader, Metadata
from torch.distributed.checkpoint.metadata import StorageMeta

from megatron_llm.training.checkpoint.format import CheckpointError

_METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.planner": {
        "SavePlan", "LoadPlan", "WriteItem", "WriteItemType", "ReadItem", "LoadItemType", "TensorWriteData",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo", "_StoragePrefix"},
    "torch": {"Size"},
    "torch.serialization": {"_get_layout"},
    "collections": {"OrderedDict"},
    "pathlib": {"PosixPath", "PurePosixPath"},  # StorageMeta.checkpoint_id as torch's own FileSystemWriter saves it
    "builtins": {"set", "frozenset", "slice"},
}
_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)),
                  type(np.dtype(np.int64)), type(np.dtype(np.float64))]


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file that asks to build something outside the allow-list."""


def _allowed(module: str, name: str) -> bool:
    if name in _METADATA_CLASSES.get(module, ()):
        return True
    return module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout))


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds only the classes of torch.distributed.checkpoint metadata."""

    def __init__(self, file: IO[bytes], path: str) -> None:
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise UnsafeCheckpointError(f"{self.path}: refusing to load: it asks for {module}.{name}, which is "
                                        "not part of a checkpoint's metadata (the file may have been tampered with)")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeCheckpointError(f"{self.path}: refusing to load: unexpected persistent reference")


def load_dcp_metadata(path: str | os.PathLike) -> Metadata:
    """A torch.distributed.checkpoint `.metadata` file, through the allow-list."""
    path = str(path)
    try:
        with open(path, "rb") as stream:
            metadata = RestrictedUnpickler(stream, path).load()
    except UnsafeCheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # a truncated or garbled pickle raises many kinds of error
        raise CheckpointError(f"{path}: not a readable checkpoint metadata file ({type(exc).__name__}: {exc})") \
            from None
    if not isinstance(metadata, Metadata):
        raise UnsafeCheckpointError(f"{path}: holds a {type(metadata).__name__}, not checkpoint metadata")
    return metadata


def safe_torch_load(source: str | os.PathLike | IO[bytes], name: str | None = None) -> Any:
    """`torch.load(weights_only=True)` admitting numpy arrays too; a refusal is an UnsafeCheckpointError."""
    label = name or str(source)
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            return torch.load(source, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise UnsafeCheckpointError(f"{label}: refusing to load: {reason} (only tensors, plain Python values "
                                    "and numpy arrays are admitted)") from None
    except FileNotFoundError:
        raise CheckpointError(f"{label}: missing") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{label}: not a readable torch file ({exc})") from None


class SafeFileSystemReader(FileSystemReader):
    """torch's FileSystemReader reading `.metadata` through the allow-list (and only once)."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._metadata: Metadata | None = None

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        if self._metadata is None or rank is not None:
            metadata = load_dcp_metadata(self._get_metadata_path(rank))
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            if rank is not None:
                return metadata
            self._metadata = metadata
        return self._metadata


def safe_load_strategies() -> tuple[Any, Any]:
    """(sharded, common) strategies for `dist_checkpointing.load` that read through the allow-list."""
    from megatron_llm.training.checkpoint.safe_strategies import SafeCommonLoadStrategy, SafeTorchDistLoadStrategy

    return SafeTorchDistLoadStrategy(), SafeCommonLoadStrategy()


def check_checkpoint_pickles(directory: str | os.PathLike) -> None:
    """Refuse a checkpoint directory whose `.metadata` or `common.pt` asks for anything off the allow-list
    (used by `checkpoint verify`: a crafted file is reported without being run)."""
    directory = Path(directory)
    if (directory / ".metadata").is_file():
        load_dcp_metadata(directory / ".metadata")
    if (directory / "common.pt").is_file():
        safe_torch_load(directory / "common.pt")


def load_bytes_safely(value: io.BytesIO, name: str) -> Any:
    """A serialized object of a checkpoint (e.g. an RNG state), read with `weights_only=True`."""
    return safe_torch_load(value, name)
