"""Tensor names and layouts: megatron-core GPTModel (layout-free, TP-merged) <-> Hugging Face Llama/Qwen2.

Megatron-side names are the layout-free ShardedTensor keys of a torch_dist checkpoint, with the
per-layer tensors taken one layer at a time (the leading [num_layers] axis removed). The norms use
the keys megatron-core maps them to for Transformer Engine compatibility (`linear_qkv.layer_norm_weight`,
`linear_fc1.layer_norm_weight`), whichever layer spec trained the model.

`linear_qkv` is grouped per query group: [groups, heads_per_group + 2, head_dim, hidden] holds the
group's query heads, then its key head, then its value head. `linear_fc1` is [gate; up].
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from megatron_llm.config.schema import ModelConfig
from megatron_llm.errors import UsageError

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT = "output_layer.weight"
LAYER_PREFIX = "decoder.layers."
QKV = "self_attention.linear_qkv.weight"
QKV_BIAS = "self_attention.linear_qkv.bias"
PROJ = "self_attention.linear_proj.weight"
INPUT_NORM = "self_attention.linear_qkv.layer_norm_weight"
FC1 = "mlp.linear_fc1.weight"
FC2 = "mlp.linear_fc2.weight"
MLP_NORM = "mlp.linear_fc1.layer_norm_weight"
FC1_GATE, FC1_UP = FC1 + "[gate]", FC1 + "[up]"

HF_EMBEDDING = "model.embed_tokens.weight"
HF_FINAL_NORM = "model.norm.weight"
HF_OUTPUT = "lm_head.weight"


def layer_keys(model: ModelConfig) -> list[str]:
    """Megatron per-layer tensor names (without the `decoder.layers.` prefix) this model has."""
    keys = [INPUT_NORM, QKV, PROJ, MLP_NORM, FC1, FC2]
    if model.add_qkv_bias:
        keys.insert(2, QKV_BIAS)
    return keys


def hf_layer_shapes(model: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one HF decoder layer's tensors by name suffix, in the order they are written."""
    h, heads, groups, d = model.hidden_size, model.num_attention_heads, model.query_groups, model.head_dim
    ffn = model.ffn_hidden_size
    shapes = {
        "input_layernorm.weight": (h,), "self_attn.q_proj.weight": (heads * d, h),
        "self_attn.k_proj.weight": (groups * d, h), "self_attn.v_proj.weight": (groups * d, h),
        "self_attn.o_proj.weight": (h, heads * d), "post_attention_layernorm.weight": (h,),
        "mlp.gate_proj.weight": (ffn, h), "mlp.up_proj.weight": (ffn, h), "mlp.down_proj.weight": (h, ffn),
    }
    if model.add_qkv_bias:
        shapes.update({"self_attn.q_proj.bias": (heads * d,), "self_attn.k_proj.bias": (groups * d,),
                       "self_attn.v_proj.bias": (groups * d,)})
    return shapes


def hf_layer_names(layer: int, model: ModelConfig) -> list[str]:
    """Hugging Face tensor names of decoder layer `layer`."""
    return [f"model.layers.{layer}.{suffix}" for suffix in hf_layer_shapes(model)]


def hf_plan(model: ModelConfig, vocab_size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Every HF tensor of the model with its shape, in export order."""
    plan = [(HF_EMBEDDING, (vocab_size, model.hidden_size))]
    for layer in range(model.num_layers):
        plan += [(f"model.layers.{layer}.{suffix}", shape) for suffix, shape in hf_layer_shapes(model).items()]
    plan.append((HF_FINAL_NORM, (model.hidden_size,)))
    if not model.tie_embeddings:
        plan.append((HF_OUTPUT, (vocab_size, model.hidden_size)))
    return plan


def _group_shape(model: ModelConfig) -> tuple[int, int, int]:
    groups = model.query_groups
    return groups, model.num_attention_heads // groups, model.head_dim


def split_qkv(qkv: torch.Tensor, model: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grouped megatron qkv (weight [out, hidden] or bias [out]) -> HF q, k, v."""
    groups, per_group, head_dim = _group_shape(model)
    tail = qkv.shape[1:]
    expected = groups * (per_group + 2) * head_dim
    if qkv.shape[0] != expected:
        raise UsageError(f"{QKV}: {qkv.shape[0]} rows, expected {expected} = query_groups x "
                         f"(heads_per_group + 2) x head_dim = {groups} x {per_group + 2} x {head_dim}")
    grouped = qkv.reshape(groups, per_group + 2, head_dim, *tail)
    q = grouped[:, :per_group].reshape(groups * per_group * head_dim, *tail)
    k = grouped[:, per_group].reshape(groups * head_dim, *tail)
    v = grouped[:, per_group + 1].reshape(groups * head_dim, *tail)
    return q.contiguous(), k.contiguous(), v.contiguous()


def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model: ModelConfig) -> torch.Tensor:
    """HF q, k, v (weights or biases) -> grouped megatron qkv."""
    groups, per_group, head_dim = _group_shape(model)
    tail = q.shape[1:]
    grouped = torch.cat([
        q.reshape(groups, per_group, head_dim, *tail),
        k.reshape(groups, 1, head_dim, *tail),
        v.reshape(groups, 1, head_dim, *tail),
    ], dim=1)
    return grouped.reshape(groups * (per_group + 2) * head_dim, *tail).contiguous()


def megatron_layer_to_hf(tensors: dict[str, torch.Tensor], layer: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """One decoder layer: megatron names (as in `layer_keys`; FC1 whole or as FC1_GATE, FC1_UP) -> HF names."""
    p = f"model.layers.{layer}."
    q, k, v = split_qkv(tensors[QKV], model)
    if FC1 in tensors:
        gate, up = torch.chunk(tensors[FC1], 2, dim=0)
    else:  # read as two halves (each one stored chunk when TP=1)
        gate, up = tensors[FC1_GATE], tensors[FC1_UP]
    out = {
        p + "input_layernorm.weight": tensors[INPUT_NORM],
        p + "self_attn.q_proj.weight": q,
        p + "self_attn.k_proj.weight": k,
        p + "self_attn.v_proj.weight": v,
        p + "self_attn.o_proj.weight": tensors[PROJ],
        p + "post_attention_layernorm.weight": tensors[MLP_NORM],
        p + "mlp.gate_proj.weight": gate.contiguous(),
        p + "mlp.up_proj.weight": up.contiguous(),
        p + "mlp.down_proj.weight": tensors[FC2],
    }
    if model.add_qkv_bias:
        qb, kb, vb = split_qkv(tensors[QKV_BIAS], model)
        out.update({p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb, p + "self_attn.v_proj.bias": vb})
    return out


def hf_layer_to_megatron(get: Callable[[str], torch.Tensor], layer: int, model: ModelConfig) -> dict[str, torch.Tensor]:
    """One decoder layer: HF tensors (fetched by name with `get`) -> megatron names, shapes checked."""
    p = f"model.layers.{layer}."
    expected = hf_layer_shapes(model)
    t = {}
    for name, shape in expected.items():
        tensor = get(p + name)
        if tuple(tensor.shape) != shape:
            raise UsageError(f"{p + name}: shape {tuple(tensor.shape)}, expected {shape} from config.json")
        t[name] = tensor
    out = {
        INPUT_NORM: t["input_layernorm.weight"],
        QKV: merge_qkv(t["self_attn.q_proj.weight"], t["self_attn.k_proj.weight"], t["self_attn.v_proj.weight"], model),
        PROJ: t["self_attn.o_proj.weight"],
        MLP_NORM: t["post_attention_layernorm.weight"],
        FC1: torch.cat([t["mlp.gate_proj.weight"], t["mlp.up_proj.weight"]], dim=0),
        FC2: t["mlp.down_proj.weight"],
    }
    if model.add_qkv_bias:
        out[QKV_BIAS] = merge_qkv(t["self_attn.q_proj.bias"], t["self_attn.k_proj.bias"], t["self_attn.v_proj.bias"],
                                  model)
    return out


def unpad_vocab(tensor: torch.Tensor, vocab_size: int, name: str) -> torch.Tensor:
    """Drop megatron's vocabulary padding rows."""
    if tensor.shape[0] < vocab_size:
        raise UsageError(f"{name}: {tensor.shape[0]} rows, fewer than the vocabulary size {vocab_size}")
    return tensor[:vocab_size].contiguous()


def pad_vocab(tensor: torch.Tensor, padded_size: int) -> torch.Tensor:
    """Add zero rows up to megatron's padded vocabulary size (they are sliced off again on export)."""
    if tensor.shape[0] == padded_size:
        return tensor
    pad = torch.zeros(padded_size - tensor.shape[0], *tensor.shape[1:], dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=0)
