"""Model configuration: our `ModelConfig` <-> a Hugging Face `config.json` (Llama, Mistral, Qwen2).

Export writes `LlamaForCausalLM`, or `Qwen2ForCausalLM` when the model has q/k/v biases (Llama's
`attention_bias` would also add an output-projection bias that megatron's model does not have).
Rope settings are written in transformers 5's `rope_parameters` form; legacy top-level `rope_theta`
and `rope_scaling` are read too. megatron-core's llama3 rope scaling fixes low_freq_factor=1,
high_freq_factor=4 and original_max_position_embeddings=8192: other values are refused on import.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from megatron_llm.config.schema import ModelConfig
from megatron_llm.errors import UsageError

SUPPORTED = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "qwen3": "Qwen3ForCausalLM"}
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
_TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rope_theta(model: ModelConfig) -> float:
    """The theta the engine really uses (GPTModel receives `int(rotary_base)`)."""
    return float(int(model.rotary_base))


def hf_config_dict(model: ModelConfig, vocab_size: int, dtype: str, special: dict[str, int | None]) -> dict[str, Any]:
    """A `config.json` for `model` with the true (unpadded) `vocab_size`; `special` holds bos/eos/pad ids."""
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": rope_theta(model)}
    if model.rope_scaling == "llama3":
        rope = {"rope_type": "llama3", "rope_theta": rope_theta(model), "factor": float(model.rope_scaling_factor),
                **LLAMA3_FIXED}
    model_type = "qwen3" if model.qk_norm else "qwen2" if model.add_qkv_bias else "llama"
    config: dict[str, Any] = {
        "architectures": [SUPPORTED[model_type]],
        "model_type": model_type,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.query_groups,
        "head_dim": model.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model.max_position_embeddings,
        "rms_norm_eps": model.norm_epsilon,
        "rope_parameters": rope,
        "tie_word_embeddings": model.tie_embeddings,
        "vocab_size": vocab_size,
        "initializer_range": model.init_method_std,
        "attention_dropout": 0.0,
        "use_cache": True,
        "dtype": _TORCH_DTYPES[dtype],
        "bos_token_id": special.get("bos"),
        "eos_token_id": special.get("eos"),
        "pad_token_id": special.get("pad"),
    }
    if model_type == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif model_type == "qwen3":
        config.update(attention_bias=False, use_sliding_window=False, sliding_window=None,
                      max_window_layers=model.num_layers, layer_types=["full_attention"] * model.num_layers)
    else:
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=model.num_layers,
                      layer_types=["full_attention"] * model.num_layers)
    return config


def read_config_json(hf_dir: Path) -> dict[str, Any]:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise UsageError(f"{path}: missing (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}: invalid JSON ({exc})") from None


def _rope(raw: dict[str, Any], where: str) -> tuple[float, str | None, float]:
    params = raw.get("rope_parameters")
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        params.setdefault("rope_theta", raw.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    if theta != int(theta):
        raise UsageError(f"{where}: rope_theta={theta} is not an integer (megatron-core's GPTModel takes an int)")
    if rope_type == "default":
        return theta, None, 8.0
    if rope_type != "llama3":
        raise UsageError(f"{where}: rope_parameters.rope_type={rope_type!r} is not supported (default or llama3)")
    for field, value in LLAMA3_FIXED.items():
        if float(params.get(field, value)) != float(value):
            raise UsageError(f"{where}: rope_parameters.{field}={params.get(field)} is not supported: megatron-core's "
                             f"llama3 rope scaling uses {value}")
    return theta, "llama3", float(params.get("factor", 8.0))


def _require(raw: dict[str, Any], field: str, where: str) -> Any:
    if raw.get(field) is None:
        raise UsageError(f"{where}: field {field!r} is missing")
    return raw[field]


def model_config_from_hf(raw: dict[str, Any], where: str = "config.json") -> ModelConfig:
    """Our ModelConfig from a HF `config.json` dict; unsupported architectures and options name the field."""
    model_type = raw.get("model_type")
    if model_type not in SUPPORTED:
        arch = ", ".join(raw.get("architectures") or []) or "?"
        raise UsageError(f"{where}: model_type={model_type!r} ({arch}) is not supported "
                         f"(supported: {', '.join(SUPPORTED)})")
    if raw.get("hidden_act", "silu") != "silu":
        raise UsageError(f"{where}: hidden_act={raw['hidden_act']!r} is not supported (SwiGLU with silu only)")
    if raw.get("mlp_bias"):
        raise UsageError(f"{where}: mlp_bias=true is not supported")
    if model_type != "qwen2" and raw.get("attention_bias"):
        raise UsageError(f"{where}: attention_bias=true is not supported (it adds an o_proj bias)")
    window = raw.get("sliding_window")
    sliding = raw.get("use_sliding_window", model_type == "mistral")
    if sliding and window is not None and window < raw.get("max_position_embeddings", 0):
        raise UsageError(f"{where}: sliding_window={window} is not supported (full attention only)")
    layer_types = raw.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        raise UsageError(f"{where}: layer_types contains sliding attention, which is not supported")
    heads = _require(raw, "num_attention_heads", where)
    hidden = _require(raw, "hidden_size", where)
    theta, scaling, factor = _rope(raw, where)
    return ModelConfig(
        num_layers=_require(raw, "num_hidden_layers", where),
        hidden_size=hidden,
        ffn_hidden_size=_require(raw, "intermediate_size", where),
        num_attention_heads=heads,
        num_query_groups=raw.get("num_key_value_heads") or heads,
        kv_channels=raw.get("head_dim") or hidden // heads,
        vocab_size=_require(raw, "vocab_size", where),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rotary_base=theta,
        rope_scaling=scaling,
        rope_scaling_factor=factor,
        norm_epsilon=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        add_qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        init_method_std=float(raw.get("initializer_range", 0.02)),
    )


def hf_dtype(raw: dict[str, Any]) -> str:
    """Our precision name for the checkpoint's dtype (`dtype` or legacy `torch_dtype`)."""
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    return {"bfloat16": "bf16", "float16": "fp16"}.get(name, "fp32")


def model_summary(model: ModelConfig) -> str:
    fields = dataclasses.asdict(model)
    keys = ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "vocab_size")
    return ", ".join(f"{k}={fields[k]}" for k in keys)
