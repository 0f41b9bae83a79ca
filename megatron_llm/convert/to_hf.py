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
from megatron_llm.convert import mapping
from megatron_llm.convert.dist_reader import TorchDistReader
from megatron_llm.convert.hf_config import DTYPES, hf_config_dict
from megatron_llm.convert.hf_files import StreamingSafetensorsWriter, publish
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


def _vocab_size(config: Config, tokenizer, padded: int) -> int:
    vocab = config.model.vocab_size or (tokenizer.vocab_size if tokenizer is not None else None)
    if vocab is None:
        raise UsageError("the checkpoint's config has no model.vocab_size and no tokenizer to take it from")
    if tokenizer is not None and tokenizer.vocab_size > vocab:
        raise UsageError(f"vocabulary conflict: the tokenizer has {tokenizer.vocab_size} tokens but "
                         f"model.vocab_size={vocab}")
    if vocab > padded:
        raise UsageError(f"vocabulary conflict: {mapping.EMBEDDING} has {padded} rows, fewer than "
                         f"model.vocab_size={vocab}")
    return vocab


def _check_layers(reader: TorchDistReader, config: Config) -> None:
    for key in mapping.layer_keys(config.model):
        shape = reader.shape(mapping.LAYER_PREFIX + key)
        if shape[0] != config.model.num_layers:
            raise UsageError(f"{mapping.LAYER_PREFIX + key}: {shape[0]} layers in the checkpoint, "
                             f"model.num_layers={config.model.num_layers}")
    rows = reader.shape(mapping.LAYER_PREFIX + mapping.FC1)[1]
    if rows != 2 * config.model.ffn_hidden_size:
        raise UsageError(f"{mapping.LAYER_PREFIX + mapping.FC1}: {rows} rows, expected 2 x model.ffn_hidden_size = "
                         f"{2 * config.model.ffn_hidden_size}")


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
    vocab = _vocab_size(config, tokenizer, reader.shape(mapping.EMBEDDING)[0])
    _check_layers(reader, config)
    output = Path(output)
    staging = _staging_dir(output)
    try:
        shards, total = _write_weights(reader, config, vocab, DTYPES[dtype], staging, max_shard_bytes, progress)
        special = {} if tokenizer is None else {"bos": tokenizer.bos_id, "eos": tokenizer.eod_id,
                                                 "pad": tokenizer.pad_id}
        hf_config = hf_config_dict(config.model, vocab, dtype, special)
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
    return ExportResult(output, directory, metadata.get("step", 0), vocab, tok_path, shards, total)


def _write_weights(reader: TorchDistReader, config: Config, vocab: int, dtype: torch.dtype, out: Path,
                   max_shard_bytes: int, progress: bool) -> tuple[list[str], int]:
    model = config.model
    writer = StreamingSafetensorsWriter(out, mapping.hf_plan(model, vocab), dtype, max_shard_bytes)
    writer.add(mapping.HF_EMBEDDING, mapping.unpad_vocab(reader.read(mapping.EMBEDDING), vocab, mapping.EMBEDDING))
    for layer in tqdm(range(model.num_layers), desc="to-hf layers", unit="layer", disable=not progress):
        tensors = {key: reader.read_layer(mapping.LAYER_PREFIX + key, layer)
                   for key in mapping.layer_keys(model) if key != mapping.FC1}
        ffn = model.ffn_hidden_size
        tensors[mapping.FC1_GATE] = reader.read_layer(mapping.LAYER_PREFIX + mapping.FC1, layer, (0, ffn))
        tensors[mapping.FC1_UP] = reader.read_layer(mapping.LAYER_PREFIX + mapping.FC1, layer, (ffn, 2 * ffn))
        converted = mapping.megatron_layer_to_hf(tensors, layer, model)
        del tensors
        for name in mapping.hf_layer_names(layer, model):
            writer.add(name, converted.pop(name))
    writer.add(mapping.HF_FINAL_NORM, reader.read(mapping.FINAL_NORM))
    if not model.tie_embeddings:
        writer.add(mapping.HF_OUTPUT, mapping.unpad_vocab(reader.read(mapping.OUTPUT), vocab, mapping.OUTPUT))
    return writer.finish(), writer.total_bytes
