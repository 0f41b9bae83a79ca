"""`convert from-hf`: a local Hugging Face directory (Llama 2/3, Mistral, Qwen2) -> a megatron-llm checkpoint.

The checkpoint is written the way training writes one (`save_model_weights`: torch_dist, layout-free
keys, contents ["model"], step 0), by model chunks built at the requested TP x PP layout in that many
local gloo processes. Each process fills only its own shards, converting one HF layer at a time. The
whole checkpoint root is written into a hidden staging directory and renamed at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from megatron_llm.config.loader import config_to_dict
from megatron_llm.config.schema import Config
from megatron_llm.config.validation import layout_problems
from megatron_llm.convert import mapping
from megatron_llm.convert.hf_config import hf_dtype, model_config_from_hf, read_config_json
from megatron_llm.convert.hf_files import SafetensorsReader, publish
from megatron_llm.errors import UsageError
from megatron_llm.model.vocab import padded_vocab_size

_PLAIN_TO_KEY = {"input_layernorm.weight": mapping.INPUT_NORM, "pre_mlp_layernorm.weight": mapping.MLP_NORM}
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_config(hf_dir: str | Path, tensor: int = 1, pipeline: int = 1) -> Config:
    """Our Config for a HF model at the given layout; UsageError naming the field when it cannot work."""
    raw = read_config_json(Path(hf_dir))
    config = Config()
    config.model = model_config_from_hf(raw, str(Path(hf_dir) / "config.json"))
    config.parallel.tensor, config.parallel.pipeline = tensor, pipeline
    config.precision.dtype = hf_dtype(raw)
    config.data.seq_length = min(config.data.seq_length, config.model.max_position_embeddings)
    problems = layout_problems(config, tensor * pipeline)
    if problems:
        raise UsageError(f"cannot lay out {hf_dir} at --tensor-parallel {tensor} --pipeline-parallel {pipeline}: "
                         + "; ".join(problems))
    return config


def expected_hf_names(config: Config) -> list[str]:
    m = config.model
    names = [mapping.HF_EMBEDDING, mapping.HF_FINAL_NORM]
    if not m.tie_embeddings:
        names.append(mapping.HF_OUTPUT)
    for layer in range(m.num_layers):
        names += mapping.hf_layer_names(layer, m)
    return names


def check_weights(reader: SafetensorsReader, config: Config) -> None:
    """Every tensor the model needs is there with the right shape, and nothing we would silently drop."""
    m = config.model
    expected = set(expected_hf_names(config))
    missing = sorted(expected - set(reader.names()))
    if missing:
        raise UsageError(f"{reader.dir}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = sorted(n for n in set(reader.names()) - expected
                   if not n.endswith(_IGNORED_SUFFIXES) and not (m.tie_embeddings and n == mapping.HF_OUTPUT))
    if extra:
        raise UsageError(f"{reader.dir}: tensor {extra[0]!r} has no place in a {m.num_layers}-layer Llama-style "
                         f"model ({len(extra)} unexpected in all)")
    for name in (mapping.HF_EMBEDDING,) + (() if m.tie_embeddings else (mapping.HF_OUTPUT,)):
        shape = reader.shape(name)
        if shape != (m.vocab_size, m.hidden_size):
            raise UsageError(f"{name}: shape {shape}, expected (vocab_size, hidden_size) = "
                             f"({m.vocab_size}, {m.hidden_size}) from config.json")


class _GlobalTensors:
    """Megatron global (TP-merged) tensors computed from HF ones, one decoder layer cached at a time."""

    def __init__(self, reader: SafetensorsReader, config: Config, progress: tqdm | None = None) -> None:
        self.reader, self.config, self.progress = reader, config, progress
        m = config.model
        self.padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, config.parallel.tensor)
        self._layer: tuple[int, dict[str, torch.Tensor]] | None = None

    def get(self, name: str, layer_offset: int) -> torch.Tensor:
        if name == mapping.EMBEDDING or (name == mapping.OUTPUT and self.config.model.tie_embeddings):
            return mapping.pad_vocab(self.reader.get(mapping.HF_EMBEDDING), self.padded)
        if name == mapping.OUTPUT:
            return mapping.pad_vocab(self.reader.get(mapping.HF_OUTPUT), self.padded)
        if name == mapping.FINAL_NORM:
            return self.reader.get(mapping.HF_FINAL_NORM)
        if not name.startswith(mapping.LAYER_PREFIX):
            raise UsageError(f"model parameter {name!r} has no Hugging Face counterpart")
        local, _, rest = name[len(mapping.LAYER_PREFIX):].partition(".")
        layer = int(local) + layer_offset
        if self._layer is None or self._layer[0] != layer:
            self._layer = (layer, mapping.hf_layer_to_megatron(self.reader.get, layer, self.config.model))
            if self.progress is not None:
                self.progress.update(1)
        key = _PLAIN_TO_KEY.get(rest, rest)
        if key not in self._layer[1]:
            raise UsageError(f"model parameter {name!r} has no Hugging Face counterpart")
        return self._layer[1][key]


def tp_shard(full: torch.Tensor, param: torch.nn.Parameter, name: str, rank: int, size: int) -> torch.Tensor:
    """This TP rank's part of a global tensor, as megatron-core's layers split it."""
    if size == 1 or not getattr(param, "tensor_model_parallel", False):
        return full
    dim = param.partition_dim
    if name.endswith("linear_fc1.weight"):
        gate, up = torch.chunk(full, 2, dim=0)
        return torch.cat([torch.chunk(gate, size, dim)[rank], torch.chunk(up, size, dim)[rank]], dim=0)
    return torch.chunk(full, size, dim)[rank]


def load_hf_into_chunks(chunks: list, reader: SafetensorsReader, config: Config, progress: bool = True) -> None:
    """Fill built model chunks (any TP/PP/VPP layout) with the HF weights."""
    from megatron.core import parallel_state
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    layers = config.model.num_layers // parallel_state.get_pipeline_model_parallel_world_size()
    show = torch.distributed.get_rank() == 0 and progress
    bar = tqdm(total=layers, desc="from-hf layers (rank 0)", unit="layer", disable=not show)
    source = _GlobalTensors(reader, config, bar)
    for index, chunk in enumerate(chunks):
        offset = get_transformer_layer_offset(chunk.config, index if len(chunks) > 1 else None)
        with torch.no_grad():
            for name, param in chunk.named_parameters():
                part = tp_shard(source.get(name, offset), param, name, tp_rank, tp)
                if part.shape != param.shape:
                    raise UsageError(f"{name}: converted shard has shape {tuple(part.shape)}, the model expects "
                                     f"{tuple(param.shape)}")
                param.copy_(part)
    bar.close()


def _rank_main(rank: int, world: int, port: int, hf_dir: str, config_dict: dict, staging: str) -> None:
    """One process of the conversion: build this rank's chunks, fill them, save collectively."""
    from megatron_llm.config.loader import config_from_dict
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed
    from megatron_llm.runtime.platform import detect_platform
    from megatron_llm.training.checkpoint.save_load import save_model_weights

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    config = config_from_dict(config_dict)
    init_distributed(config.parallel)
    try:
        chunks = build_model_chunks(config, config.model.vocab_size, detect_platform())
        load_hf_into_chunks(chunks, SafetensorsReader(hf_dir), config)
        save_model_weights(chunks, config, Path(staging), step=0)
    finally:
        destroy_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def import_from_hf(hf_dir: str | Path, output: str | Path, tensor: int = 1, pipeline: int = 1,
                   config_out: str | Path | None = None) -> Config:
    """Convert a HF model directory into a checkpoint root at `output`; returns the config it wrote."""
    hf_dir, output = Path(hf_dir), Path(output).resolve()
    config = build_config(hf_dir, tensor, pipeline)
    check_weights(SafetensorsReader(hf_dir), config)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UsageError(f"{output}: already exists and is not empty (choose a new --output)")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    world = tensor * pipeline
    args = (world, _free_port(), str(hf_dir), config_to_dict(config), str(staging))
    try:
        if world == 1:
            _rank_main(0, *args)
        else:
            import torch.multiprocessing as mp

            mp.start_processes(_rank_main, args=args, nprocs=world, start_method="spawn")
        publish(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if config_out is not None:
        write_config(config, Path(config_out), output)
    return config


def write_config(config: Config, path: Path, checkpoint: Path) -> None:
    """The model's config YAML, with a note on what training still needs."""
    header = ("# Written by `megatron-llm convert from-hf`. Add data.paths (tokenized with the model's tokenizer)\n"
              "# and schedule.train_iters, then start from the converted weights at any layout:\n"
              f"#   megatron-llm train --config {path} --resume-from {checkpoint} --finetune --run-dir RUN\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(config_to_dict(config), sort_keys=False))
