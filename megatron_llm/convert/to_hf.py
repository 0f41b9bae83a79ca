"""`convert to-hf`: a megatron-llm checkpoint (any TP/PP/VPP layout) -> a Hugging Face model directory.

One process, no process group: tensors are read from the torch_dist files one layer at a time (the
reader merges the TP/PP shards), mapped to HF names and written to safetensors shards as they fill.
Everything is written into a hidden staging directory that is renamed to the output only at the end, so
an interrupted export never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_llm.config.loader import config_from_dict
from megatron_llm.config.schema import Config
from megatron_llm.convert.dist_reader import TorchDistReader
from megatron_llm.convert.hf_config import DTYPES, hf_config_dict
from megatron_llm.convert.hf_files import StreamingSafetensorsWriter, publish
from megatron_llm.convert.mapping import Dims, ParamMapping, ReadMegatron, Rows
from megatron_llm.convert.tables import Table, export_entry, table_for
from megatron_llm.errors import UsageError
from megatron_llm.training.checkpoint.format import read_metadata, resolve_checkpoint, verify_directory


@dataclass
class ExportResult:
    output: Path
    checkpoint: Path
    step: int
    vocab_size: int
    tokenizer: str | None
    shards: list[str]
    total_bytes: int


def _tokenizer_dir(metadata: dict, config: Config) -> str | None:
    recorded = metadata.get("tokenizer") or {}
    return recorded.get("path") or config.data.tokenizer


def _load_tokenizer(path: str, metadata: dict):
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
    from megatron_llm.training.checkpoint.save_load import tokenizer_identity

    if not Path(path).exists():
        raise UsageError(f"{path}: the checkpoint's tokenizer is missing (recorded in megatron_llm.json)")
    recorded = (metadata.get("tokenizer") or {}).get("sha256")
    if recorded and tokenizer_identity(path)["sha256"] != recorded:
        raise UsageError(f"{path}: tokenizer files changed since the checkpoint was written (sha256 differs "
                         "from megatron_llm.json): refusing to pair the model with a different vocabulary")
    return load_tokenizer(path)


def _vocab_size(config: Config, tokenizer, padded: int, embedding: str) -> int:
    vocab = config.model.vocab_size or (tokenizer.vocab_size if tokenizer is not None else None)
    if vocab is None:
        raise UsageError("the checkpoint's config has no model.vocab_size and no tokenizer to take it from")
    if tokenizer is not None and tokenizer.vocab_size > vocab:
        raise UsageError(f"vocabulary conflict: the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.vocab_size={vocab}")
    if vocab > padded:
        raise UsageError(f"vocabulary conflict: {embedding} has {padded} rows, fewer than "
                         f"model.vocab_size={vocab}")
    return vocab


def _check_shapes(reader: TorchDistReader, table: Table, dims: Dims) -> None:
    """Every tensor the export reads is in the checkpoint with the shape the config implies."""
    layers = dims.model.num_layers
    for entry in table.entries:
        if not entry.hf_shapes(dims):
            continue
        key = entry.checkpoint_key
        shape = tuple(reader.shape(key))
        if entry.per_layer:
            if shape[0] != layers:
                raise UsageError(f"{key}: {shape[0]} layers in the checkpoint, model.num_layers={layers}")
            shape = shape[1:]
        expected = entry.megatron_shape(dims)
        if shape != expected:
            per_layer = " per layer" if entry.per_layer else ""
            raise UsageError(f"{key}: shape {shape}{per_layer} in the checkpoint, expected {expected} from the "
                             "checkpoint's model config")


def _staging_dir(output: Path) -> Path:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"{output}: already exists and is not empty (choose a new --output)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def export_to_hf(checkpoint: str | Path, output: str | Path, iteration: int | None = None, dtype: str | None = None,
                 max_shard_bytes: int = 2 << 30, progress: bool = True) -> ExportResult:
    """Export a checkpoint (root or `iter_*` directory) to a HF directory; returns what was written."""
    directory = resolve_checkpoint(Path(checkpoint), iteration)
    problems = verify_directory(directory, deep=False)
    if problems:
        raise UsageError(f"refusing to export {directory}: {problems[0]}")
    metadata = read_metadata(directory)
    if "model" not in metadata.get("contents", ["model"]):
        raise UsageError(f"{directory}: the checkpoint holds no model weights (contents {metadata['contents']})")
    config = config_from_dict(metadata["config"])
    dtype = dtype or config.precision.dtype
    if dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    reader = TorchDistReader(directory)
    tok_path = _tokenizer_dir(metadata, config)
    tokenizer = _load_tokenizer(tok_path, metadata) if tok_path else None
    table = table_for(config.model)
    embedding = table.vocab_entry().checkpoint_key
    padded = reader.shape(embedding)[0]
    dims = Dims(config.model, _vocab_size(config, tokenizer, padded, embedding), padded)
    _check_shapes(reader, table, dims)
    output = Path(output)
    staging = _staging_dir(output)
    try:
        shards, total = _write_weights(reader, table, dims, DTYPES[dtype], staging, max_shard_bytes, progress)
        special = {} if tokenizer is None else {"bos": tokenizer.bos_id, "eos": tokenizer.eod_id,
                                                 "pad": tokenizer.pad_id}
        hf_config = hf_config_dict(config.model, dims.vocab_size, dtype, special)
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        generation = {k: v for k, v in (("bos_token_id", special.get("bos")), ("eos_token_id", special.get("eos")),
                                        ("pad_token_id", special.get("pad"))) if v is not None}
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        if tok_path:
            from megatron_llm.data.tokenizers.tokenizer import export_for_hf

            export_for_hf(tok_path, staging)
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ExportResult(output, directory, metadata.get("step", 0), dims.vocab_size, tok_path, shards, total)


def _region(reader: TorchDistReader, entry: ParamMapping, layer: int | None) -> ReadMegatron:
    """Reads (rows of) one entry's global tensor, at one layer for a per-layer entry."""
    key = entry.checkpoint_key

    def read(rows: Rows) -> torch.Tensor:
        if layer is not None:
            return reader.read_layer(key, layer, rows)
        if rows is None:
            return reader.read(key)
        rest = tuple(reader.shape(key)[1:])
        return reader.read(key, (rows[0],) + (0,) * len(rest), (rows[1] - rows[0],) + rest)

    return read


def _write_weights(reader: TorchDistReader, table: Table, dims: Dims, dtype: torch.dtype, out: Path,
                   max_shard_bytes: int, progress: bool) -> tuple[list[str], int]:
    """Walk the table: each entry is read, converted and written before the next one is read."""
    writer = StreamingSafetensorsWriter(out, table.hf_plan(dims), dtype, max_shard_bytes)

    def write(entry: ParamMapping, layer: int | None) -> None:
        if entry.hf_shapes(dims):  # a tied output layer exports nothing
            for name, tensor in export_entry(entry, _region(reader, entry, layer), layer, dims):
                writer.add(name, tensor)

    for entry in table.head:
        write(entry, None)
    for layer in tqdm(range(dims.model.num_layers), desc="to-hf layers", unit="layer", disable=not progress):
        for entry in table.layer:
            write(entry, layer)
    for entry in table.tail:
        write(entry, None)
    return writer.finish(), writer.total_bytes
