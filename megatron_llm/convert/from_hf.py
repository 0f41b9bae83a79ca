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
from megatron_llm.convert.hf_config import hf_dtype, model_config_from_hf, read_config_json
from megatron_llm.convert.hf_files import SafetensorsReader, publish
from megatron_llm.convert.mapping import Dims, ParamMapping
from megatron_llm.convert.tables import check_hf_shape, import_entry, table_for
from megatron_llm.errors import UsageError
from megatron_llm.model.vocab import padded_vocab_size


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


def dims_of(config: Config) -> Dims:
    """The sizes the weight map needs, the vocabulary padded as the model built at this TP size pads it."""
    m = config.model
    padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by, config.parallel.tensor)
    return Dims(m, m.vocab_size, padded)


def check_weights(reader: SafetensorsReader, config: Config) -> None:
    """Every tensor the model needs is there with the right shape (read from the file headers), and nothing
    we would silently drop."""
    m, dims = config.model, dims_of(config)
    table = table_for(m)
    expected = table.hf_sources(dims)
    missing = sorted(set(expected) - set(reader.names()))
    if missing:
        raise UsageError(f"{reader.dir}: tensor {missing[0]!r} is missing ({len(missing)} missing in all)")
    extra = sorted(n for n in set(reader.names()) - set(expected) if not table.hf_tolerated(n, dims))
    if extra:
        raise UsageError(f"{reader.dir}: tensor {extra[0]!r} has no place in a {m.num_layers}-layer "
                         f"{table.name}-style model ({len(extra)} unexpected in all)")
    for name, shape in expected.items():
        check_hf_shape(name, reader.shape(name), shape, dims)


class _GlobalTensors:
    """Megatron global (TP-merged) tensors computed from HF ones, one decoder layer cached at a time."""

    def __init__(self, reader: SafetensorsReader, config: Config, progress: tqdm | None = None) -> None:
        self.reader, self.progress = reader, progress
        self.table, self.dims = table_for(config.model), dims_of(config)
        self._layer: tuple[int, dict[ParamMapping, torch.Tensor]] | None = None

    def get(self, entry: ParamMapping, layer: int | None) -> torch.Tensor:
        """`entry`'s global tensor; `layer` is the global layer number of a per-layer entry."""
        if layer is None:
            return import_entry(entry, self.reader.get, None, self.dims)
        if self._layer is None or self._layer[0] != layer:
            self._layer = None  # free the previous layer before reading the next
            self._layer = (layer, {e: import_entry(e, self.reader.get, layer, self.dims) for e in self.table.layer})
            if self.progress is not None:
                self.progress.update(1)
        return self._layer[1][entry]


def _check_split(name: str, entry: ParamMapping, param: torch.nn.Parameter) -> None:
    """The table's TP split dimension is the one megatron-core gave the parameter."""
    actual = param.partition_dim if getattr(param, "tensor_model_parallel", False) else None
    if actual != entry.tp_dim:
        raise UsageError(f"internal: {name}: megatron-core splits it along dim {actual} across tensor-parallel "
                         f"ranks, the weight map's {entry!r} along dim {entry.tp_dim}")


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
                entry, layer = source.table.find(name)
                if tp > 1:
                    _check_split(name, entry, param)
                full = source.get(entry, None if layer is None else layer + offset)
                part = entry.tp_shard(full, tp_rank, tp)
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
    from megatron_llm.runtime.hardware import detect_platform
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
