"""A model and tokenizer from a checkpoint, for evaluation and generation (no optimizer, no DDP).

The model architecture comes from the checkpoint's saved config; the parallel layout is this launch's
(one process by default, any TP/PP under torchrun with `--set parallel.tensor=2` ...): dist_checkpointing
reshards on load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from megatron_llm.config.loader import config_from_dict
from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError

INFERENCE_LAYOUT = {"tensor": 1, "pipeline": 1, "virtual_pipeline": None, "context": 1, "sequence_parallel": False,
                    "distributed_optimizer": False}


@dataclass
class Loaded:
    config: Config
    model: list
    tokenizer: object
    metadata: dict


def checkpoint_config(checkpoint: str | Path, overrides: list[str]) -> tuple[Config, dict]:
    """The checkpoint's config with a one-process layout, then `--set key=value` overrides."""
    from megatron_llm.training.checkpoint.format import read_metadata, resolve_checkpoint

    directory = resolve_checkpoint(Path(checkpoint))
    metadata = read_metadata(directory)
    raw = {section: dict(values) for section, values in metadata["config"].items()}
    raw["parallel"].update(INFERENCE_LAYOUT)
    for override in overrides:
        key, sep, value = override.partition("=")
        section, _, field = key.strip().partition(".")
        if not sep or not field:
            raise UsageError(f"--set {override!r}: expected section.field=value")
        raw.setdefault(section, {})[field] = yaml.safe_load(value) if value else None
    config = config_from_dict(raw)
    metadata["path"] = str(directory)
    return config, metadata


def tokenizer_dir(config: Config, metadata: dict, given: str | None) -> str:
    path = given or config.data.tokenizer or (metadata.get("tokenizer") or {}).get("path")
    if not path:
        raise UsageError(f"{metadata['path']}: the checkpoint names no tokenizer; pass --tokenizer DIR")
    return path


def load_for_inference(checkpoint: str | Path, overrides: list[str] = (), tokenizer: str | None = None,
                       micro_batch_size: int = 1) -> Loaded:
    """Start torch.distributed and megatron-core's groups, build the model and load the checkpoint's weights."""
    from megatron_llm.config.validation import layout_problems
    from megatron_llm.data.tokenizers.tokenizer import load_tokenizer
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import init_distributed, process_info, set_seeds
    from megatron_llm.runtime.hardware import detect_platform
    from megatron_llm.training.checkpoint.save_load import load_model_weights

    config, metadata = checkpoint_config(checkpoint, list(overrides))
    world = process_info().world_size
    p = config.parallel
    data_parallel = max(world // (p.tensor * p.pipeline * p.context), 1)
    config.schedule.micro_batch_size = micro_batch_size
    config.schedule.global_batch_size = micro_batch_size * data_parallel
    problems = layout_problems(config, world)
    if problems:
        raise UsageError("; ".join(problems))
    tok = load_tokenizer(tokenizer_dir(config, metadata, tokenizer))
    vocab = config.model.vocab_size or tok.vocab_size
    init_distributed(config.parallel)
    set_seeds(config.schedule.seed)
    model = build_model_chunks(config, vocab, detect_platform())
    load_model_weights(model, Path(metadata["path"]))
    for chunk in model:
        chunk.eval()
    return Loaded(config, model, tok, metadata)
