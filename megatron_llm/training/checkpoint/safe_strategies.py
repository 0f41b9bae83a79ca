"""megatron-core's torch_dist load strategies, reading every pickled part through `safe_pickle`.

`SafeTorchDistLoadStrategy.load` is megatron-core 0.16.1's `TorchDistLoadShardedStrategy.load` with two
things swapped: the storage reader (`SafeFileSystemReader`: `.metadata` through the allow-list) and the
planner (`SafeLoadPlanner`: serialized objects through `torch.load(weights_only=True)`). The helpers it
calls are megatron-core's own; nothing of megatron-core or torch is patched.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from megatron.core.dist_checkpointing.core import CheckpointingException
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensor
from megatron.core.dist_checkpointing.strategies import torch as mcore_torch
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME, TorchCommonLoadStrategy
from torch.distributed import checkpoint
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import BytesStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem

from megatron_llm.training.checkpoint.format import CheckpointError
from megatron_llm.training.checkpoint.safe_pickle import SafeFileSystemReader, load_bytes_safely, safe_torch_load


class SafeLoadPlanner(mcore_torch.MCoreLoadPlanner):
    """megatron-core's load planner, reading serialized objects with `weights_only=True`."""

    checkpoint_dir: str = ""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        name = f"{self.checkpoint_dir} ({read_item.dest_index.fqn})"
        loaded = load_bytes_safely(value, name)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def _our_error(exc: CheckpointException) -> BaseException:
    """The CheckpointError (e.g. a refused object) inside torch's per-rank failure report, else `exc`."""
    for failure in exc.failures.values():
        original = failure[0] if isinstance(failure, tuple) else failure
        if isinstance(original, CheckpointError):
            return original
    return exc


class SafeTorchDistLoadStrategy(mcore_torch.TorchDistLoadShardedStrategy):
    """torch_dist loading through `SafeFileSystemReader` and `SafeLoadPlanner`."""

    def load(self, sharded_state_dict: dict, checkpoint_dir: Path) -> dict:
        flexible = [t for t in nested_values(sharded_state_dict)
                    if isinstance(t, ShardedTensor) and not t.allow_shape_mismatch]
        mismatch_allowed = {t.key: t for t in nested_values(sharded_state_dict)
                            if isinstance(t, ShardedTensor) and t.allow_shape_mismatch}
        original = sharded_state_dict
        sharded_state_dict, flat_mapping, rename_mapping = \
            mcore_torch._replace_state_dict_keys_with_sharded_keys(sharded_state_dict)
        pyt_state_dict = mcore_torch.mcore_to_pyt_state_dict(sharded_state_dict, True)
        reader = SafeFileSystemReader(checkpoint_dir)
        planner = SafeLoadPlanner(shapes_validation_sharded_tensors=flexible,
                                  allow_shape_mismatch_sharded_tensors=mismatch_allowed)
        planner.checkpoint_dir = str(checkpoint_dir)
        reader.read_metadata()  # a refused `.metadata` is reported as itself, not wrapped by torch
        try:
            checkpoint.load_state_dict(pyt_state_dict, reader, planner=planner)
        except CheckpointException as exc:
            raise _our_error(exc) from None
        self.cached_global_metadata = reader.read_metadata()
        state = {k: mcore_torch._unwrap_pyt_sharded_tensor(v) for k, v in pyt_state_dict.items()}
        state = mcore_torch._replace_sharded_keys_with_state_dict_keys(state, flat_mapping, rename_mapping)
        mcore_torch._restore_dict_types(state, original)
        return state

    def load_tensors_metadata(self, checkpoint_dir: Path, metadata: Any = None) -> dict:
        if metadata is None:
            metadata = SafeFileSystemReader(checkpoint_dir).read_metadata()
        return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir: Path) -> dict:
        metadata = SafeFileSystemReader(checkpoint_dir).read_metadata()
        sharded = {}
        for key, stored in metadata.state_dict_metadata.items():
            if isinstance(stored, BytesStorageMetadata):
                obj = ShardedObject.empty_from_unique_key(key)
                sharded[obj.unique_key] = obj
        sharded.update(self.load_tensors_metadata(checkpoint_dir, metadata))
        return sharded


class SafeCommonLoadStrategy(TorchCommonLoadStrategy):
    """megatron-core's `common.pt`, read with `weights_only=True`."""

    def load_common(self, checkpoint_dir: str | Path) -> dict:
        path = os.path.join(checkpoint_dir, COMMON_STATE_FNAME)
        if not os.path.isfile(path):
            raise CheckpointingException(f"Common file {path} does not exist")
        return safe_torch_load(path)
