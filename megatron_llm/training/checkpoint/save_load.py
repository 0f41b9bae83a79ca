"""Save and load distributed checkpoints through megatron-core `dist_checkpointing` (torch_dist format).

The model's ShardedTensor keys are layout-free and the distributed optimizer is saved `fully_reshardable`,
so a checkpoint loads into any TP/PP/DP layout. A checkpoint is committed in three steps, all ranks
taking part: megatron-core writes the shards; every rank hashes the files it wrote and rank 0 writes
`megatron_llm.json` listing every file's size and checksum; then rank 0 moves the tracker file.
A process killed before the tracker moves leaves the previous checkpoint the latest one.
"""

from __future__ import annotations

import json
import random
import shutil
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing import ShardedObject
from megatron.core.dist_checkpointing.serialization import get_default_save_sharded_strategy
from torch.distributed.checkpoint.api import CheckpointException

from megatron_llm.config.loader import config_to_dict
from megatron_llm.errors import UsageError
from megatron_llm.runtime.disk import free_bytes, output_error
from megatron_llm.training.checkpoint.format import (
    CheckpointError,
    complete_steps,
    describe_files,
    directory_size,
    iter_dir,
    rank_files,
    read_metadata,
    read_tracker,
    resolve_checkpoint,
    shared_files,
    step_of,
    verify_directory,
    write_metadata,
    write_tracker,
)
from megatron_llm.training.checkpoint.optimizer_state import (
    ensure_optimizer_state,
    tolerant_state_loading,
    untie_adam_steps,
)
from megatron_llm.training.checkpoint.safe_pickle import safe_load_strategies

_SHARDING = {
    "distrib_optim_sharding_type": "fully_reshardable",
    "singleton_local_shards": False,
    "chained_optim_avoid_prefix": True,
}
RNG_KEY = "megatron_llm_rng_state"


def sharding_metadata() -> dict:
    """A fresh copy each time: megatron-core adds process groups to the dict it is given."""
    return dict(_SHARDING)

FORMAT_VERSION = 1


def model_key(index: int, num_chunks: int) -> str:
    """`model` without virtual pipeline stages, else `model0`, `model1`, ... (Megatron-LM's names)."""
    return "model" if num_chunks == 1 else f"model{index}"


def current_layout() -> dict:
    return {
        "tensor": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline": parallel_state.get_pipeline_model_parallel_world_size(),
        "virtual_pipeline": parallel_state.get_virtual_pipeline_model_parallel_world_size(),
        "data": parallel_state.get_data_parallel_world_size(),
    }


def _rank() -> int:
    return torch.distributed.get_rank()


def _world() -> int:
    return torch.distributed.get_world_size()


def unwrap(chunk: object) -> object:
    """The model inside megatron DDP wrappers (whose own state dict keys would gain a `module.` prefix)."""
    from megatron.core.distributed.data_parallel_base import _BaseDataParallel

    while isinstance(chunk, _BaseDataParallel):
        chunk = chunk.module
    return chunk


def model_sharded_state_dict(model: list) -> dict:
    return {model_key(i, len(model)): unwrap(chunk).sharded_state_dict(metadata=sharding_metadata())
            for i, chunk in enumerate(model)}


def _rng_state() -> dict:
    return {
        "random": random.getstate(),
        "np": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["np"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(state: object) -> ShardedObject:
    """Every rank's RNG state, one entry per global rank (restored only into the same layout)."""
    return ShardedObject(RNG_KEY, state, (_world(),), (_rank(),), replica_id=0)


def tokenizer_identity(tokenizer_dir: str | None) -> dict | None:
    """The tokenizer's path and a digest over its files, so a resumed or converted model is paired right."""
    if not tokenizer_dir:
        return None
    import hashlib

    directory = Path(tokenizer_dir)
    h = hashlib.sha256()
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if directory.is_dir() else [directory]
    for path in files:
        h.update(str(path.relative_to(directory) if directory.is_dir() else path.name).encode())
        h.update(path.read_bytes())
    return {"path": str(directory.resolve()), "sha256": h.hexdigest()}


def data_position(train_data: object, consumed_samples: int) -> dict:
    """Consumed samples in total and, for a blend, per dataset (read from megatron's blend index)."""
    position: dict = {"consumed_samples": consumed_samples}
    index = getattr(train_data, "dataset_index", None)
    datasets = getattr(train_data, "datasets", None)
    if index is not None and datasets:
        used = np.asarray(index[: min(consumed_samples, len(index))])
        counts = np.bincount(used, minlength=len(datasets)).tolist()
        names = [str(getattr(getattr(d, "dataset", None), "path_prefix", i)) for i, d in enumerate(datasets)]
        position["per_dataset"] = dict(zip(names, counts))
    return position


def _digest_sidecar(directory: Path, rank: int) -> Path:
    return Path(directory) / f".digest_rank{rank}.tmp.json"


def _write_then_hash(write_fn, directory: Path, rank: int, *args, **kwargs):
    """Runs in megatron's asynchronous writer: write this rank's shards, then hash them off the training loop."""
    result = write_fn(*args, **kwargs)
    digests = describe_files(Path(directory), rank_files(directory, rank))
    _digest_sidecar(directory, rank).write_text(json.dumps(digests))
    return result


def _rank_digests(directory: Path) -> dict:
    """This rank's files with sizes and checksums (from the async writer's sidecar when there is one)."""
    sidecar = _digest_sidecar(directory, _rank())
    if sidecar.is_file():
        described = json.loads(sidecar.read_text())
        sidecar.unlink()
    else:
        described = describe_files(directory, rank_files(directory, _rank()))
    if _rank() == 0:
        described.update(describe_files(directory, shared_files(directory)))
    return described


def _commit(directory: Path, root: Path, step: int, metadata: dict, update_tracker: bool) -> None:
    """Hash each rank's files, write megatron_llm.json and (last) the tracker. All ranks call this."""
    described = _rank_digests(directory)
    gathered: list = [None] * _world()
    torch.distributed.all_gather_object(gathered, described)
    problems: list = []
    if _rank() == 0:
        files = {name: entry for part in gathered for name, entry in part.items()}
        write_metadata(directory, {**metadata, "files": files})
        problems = verify_directory(directory, deep=False)
        if not problems and update_tracker:
            write_tracker(root, step)
    result = [problems]
    torch.distributed.broadcast_object_list(result, src=0)
    if result[0]:
        raise CheckpointError(f"checkpoint {directory} failed verification after save: {result[0][0]}")


def save_checkpoint(
    root: Path,
    model: list,
    config: object,
    step: int,
    consumed_samples: int = 0,
    optimizer: object | None = None,
    scheduler: object | None = None,
    train_state: dict | None = None,
    train_data: object | None = None,
    async_queue: object | None = None,
    before_commit: Callable[[], None] | None = None,
    on_commit: Callable[[Path], None] | None = None,
) -> Path:
    """Save a checkpoint of `step` under `root`; all ranks call it.

    With `async_queue` (a megatron `AsyncCallsQueue`) the shards are written in the background and the
    commit (hashes, metadata, tracker) runs when the queue finalizes the request; otherwise it returns after
    the commit. `before_commit()` runs on every rank once the shards are written, `on_commit(path)` after
    the tracker moved.
    """
    root = Path(root)
    directory = iter_dir(root, step)
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        if directory.exists():  # a partial save of the same step from a killed run
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    torch.distributed.barrier()
    for chunk in model:  # overlap_param_gather leaves other ranks' updated shards to the next forward: gather now
        if getattr(getattr(chunk, "ddp_config", None), "overlap_param_gather", False):
            chunk.start_param_sync(force_sync=True)
    state: dict = model_sharded_state_dict(model)
    contents = ["model"]
    if optimizer is not None:
        ensure_optimizer_state(optimizer)
        state["optimizer"] = optimizer.sharded_state_dict(state, metadata=sharding_metadata())
        contents.append("optimizer")
    if scheduler is not None:
        state["opt_param_scheduler"] = scheduler.state_dict()
        contents.append("scheduler")
    if train_state is not None:
        state[RNG_KEY] = _rng_sharded_object(_rng_state())
        state["train_state"] = dict(train_state)
        contents += ["rng", "train_state"]
    state["iteration"] = step
    state["checkpoint_version"] = 3.0
    metadata = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "consumed_samples": consumed_samples,
        "data": data_position(train_data, consumed_samples),
        "config": config_to_dict(config),
        "layout": current_layout(),
        "world_size": _world(),
        "tokenizer": tokenizer_identity(config.data.tokenizer) if _rank() == 0 else None,
        "contents": contents,
        "sharding": sharding_metadata(),
    }
    expected = expected_checkpoint_bytes(root, model, optimizer)
    warn_if_short_of_space(root, expected, step)
    strategy = get_default_save_sharded_strategy("torch_dist")
    try:
        request = dist_checkpointing.save(state, str(directory), sharded_strategy=strategy,
                                          async_sharded_save=async_queue is not None,
                                          content_metadata=sharding_metadata())
    except (Exception, CheckpointException) as exc:  # torch's CheckpointException is a BaseException
        raise save_failure(exc, root, directory, step, expected) from exc

    def finalize() -> None:
        if before_commit is not None:
            before_commit()
        try:
            _commit(directory, root, step, metadata, update_tracker=True)
        except (OSError, CheckpointException) as exc:
            raise save_failure(exc, root, directory, step, expected) from exc
        if on_commit is not None:
            on_commit(directory)

    if async_queue is None:
        finalize()
    else:
        request = request._replace(async_fn=partial(_write_then_hash, request.async_fn, directory, _rank()))
        request.add_finalize_fn(finalize)
        async_queue.schedule_async_request(request)
    return directory


def expected_checkpoint_bytes(root: Path, model: list, optimizer: object | None) -> int:
    """The size the next checkpoint will have: the latest one's, else the parameters' bytes (times three
    with an optimizer: its two Adam moments), summed over ranks. Every rank calls it."""
    latest = read_tracker(root) if Path(root).is_dir() else None
    if latest is not None and iter_dir(root, latest).is_dir():
        return directory_size(iter_dir(root, latest))
    local = sum(p.numel() * 4 for chunk in model for p in unwrap(chunk).parameters())
    local *= 3 if optimizer is not None else 1
    gathered: list = [None] * _world()
    torch.distributed.all_gather_object(gathered, local)
    return int(sum(gathered))


def warn_if_short_of_space(root: Path, expected: int, step: int) -> None:
    """A warning (rank 0) before a save that will not fit on the checkpoint's file system."""
    if _rank() != 0:
        return
    free = free_bytes(root)
    if free < expected:
        print(f"warning: {root} has {free / 1e6:.1f} MB free, the checkpoint of step {step} needs about "
              f"{expected / 1e6:.1f} MB: the save will probably fail (free space or lower checkpoint.keep_last)",
              file=sys.stderr, flush=True)


def save_failure(exc: BaseException, root: Path, directory: Path, step: int, expected: int) -> BaseException:
    """A one-line CheckpointError when a save failed for want of space or permission (the partial
    directory is removed; the tracker still names the previous checkpoint); else `exc` itself.

    torch reports a full disk while writing a shard as "enforce fail at inline_container.cc ... unexpected
    pos" (no errno), so a failure with under 1 MB left on the file system counts as a full disk too."""
    problem = output_error(exc, f"the checkpoint of step {step}", directory)
    if problem is None and free_bytes(root) < (1 << 20):
        problem = UsageError(f"{directory}: no space left on device while writing the checkpoint of step {step}")
    if problem is None:
        return exc
    if _rank() == 0:
        shutil.rmtree(directory, ignore_errors=True)
    latest = read_tracker(root)
    kept = f"the latest complete checkpoint is still {iter_dir(root, latest)}" if latest is not None else \
        "there is no earlier checkpoint"
    return CheckpointError(f"{problem} (about {expected / 1e6:.1f} MB needed, {free_bytes(root) / 1e6:.1f} MB "
                           f"free after removing the partial save); {kept}")


def save_model_weights(model_chunks: list, config: object, ckpt_root: Path, step: int = 0) -> Path:
    """A weights-only checkpoint (contents ["model"]) that `train --finetune`, sft and conversion read."""
    return save_checkpoint(Path(ckpt_root), model_chunks, config, step)


def _verify_distributed(directory: Path) -> list[str]:
    """Sizes on every rank, checksums split across ranks; the union of problems on every rank."""
    try:
        names = sorted(read_metadata(directory).get("files", {}))
    except CheckpointError as exc:
        names, local = [], [str(exc)]
    else:
        local = verify_directory(directory, deep=True, names=names[_rank()::_world()])
    gathered: list = [None] * _world()
    torch.distributed.all_gather_object(gathered, local)
    return sorted({p for part in gathered for p in part})


def select_checkpoint(path: Path, iteration: int | None = None, fallback: bool = False) -> Path:
    """The directory to load: `path` (root or iter dir), verified; with `fallback`, older ones if corrupt."""
    directory = resolve_checkpoint(Path(path), iteration)
    problems = _verify_distributed(directory)
    if not problems:
        return directory
    if fallback and step_of(directory) is not None:
        root = directory.parent
        for step in complete_steps(root):
            if step >= step_of(directory):
                continue
            candidate = iter_dir(root, step)
            if not _verify_distributed(candidate):
                if _rank() == 0:
                    print(f"checkpoint {directory} is damaged ({problems[0]}); falling back to {candidate}",
                          flush=True)
                return candidate
    hint = "" if fallback else " (set checkpoint.fallback_on_corruption=true to fall back to an older one)"
    raise CheckpointError(f"refusing to load {directory}: {problems[0]}{hint}")


def load_checkpoint(
    path: Path,
    model: list,
    optimizer: object | None = None,
    scheduler: object | None = None,
    iteration: int | None = None,
    finetune: bool = False,
    fallback: bool = False,
) -> dict:
    """Load into built model chunks (and optimizer/scheduler unless `finetune`); returns the metadata.

    The returned dict is `megatron_llm.json` plus `path` and, for a full load, `train_state`.
    """
    directory = select_checkpoint(path, iteration, fallback)
    metadata = read_metadata(directory)
    contents = set(metadata.get("contents", []))
    full = not finetune and optimizer is not None and "optimizer" in contents
    request: dict = model_sharded_state_dict(model)
    if full:
        ensure_optimizer_state(optimizer)
        request["optimizer"] = optimizer.sharded_state_dict(request, is_loading=True, metadata=sharding_metadata())
    same_layout = metadata.get("layout") == current_layout() and metadata.get("world_size") == _world()
    if full and "rng" in contents and same_layout:
        request[RNG_KEY] = _rng_sharded_object(None)
    sharded_strategy, common_strategy = safe_load_strategies()
    loaded = dist_checkpointing.load(request, str(directory), sharded_strategy=sharded_strategy,
                                     common_strategy=common_strategy)
    for i, chunk in enumerate(model):
        unwrap(chunk).load_state_dict(loaded[model_key(i, len(model))], strict=True)
    result = {**metadata, "path": str(directory)}
    if not full:
        return result
    with torch.no_grad(), tolerant_state_loading(optimizer):
        optimizer.load_state_dict(loaded["optimizer"])
    untie_adam_steps(optimizer)
    if scheduler is not None and "opt_param_scheduler" in loaded:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if RNG_KEY in request:
        _set_rng_state(loaded[RNG_KEY])
    result["train_state"] = loaded.get("train_state", {"step": metadata["step"],
                                                      "consumed_samples": metadata["consumed_samples"]})
    return result


def load_model_weights(model_chunks: list, checkpoint_path_or_root: Path, iteration: int | None = None) -> dict:
    """Load only the weights of a checkpoint (any layout) into built chunks; returns `megatron_llm.json`."""
    return load_checkpoint(Path(checkpoint_path_or_root), model_chunks, iteration=iteration, finetune=True)
