"""The weight map of each supported architecture: one table of mapping objects, walked by to_hf and from_hf.

A table is read in order: the entries before the per-layer block (`*` in the names), the block once for
every decoder layer, then the rest. That order is the order tensors are written in on export. A variant
of an architecture (q/k/v biases, QK-norm, ...) is the base table plus its extra entries (`variant`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from megatron_llm.config.schema import ModelConfig
from megatron_llm.convert.mapping import (
    LAYER,
    QKV,
    Dims,
    Direct,
    GatedMLP,
    ParamMapping,
    ReadMegatron,
    Vocab,
    at_layer,
)
from megatron_llm.errors import UsageError


def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(re.escape(LAYER), r"(\d+)") + "$")


class Table:
    """An architecture's weight map."""

    def __init__(self, name: str, entries: Sequence[ParamMapping], ignored: Sequence[str] = ()) -> None:
        self.name, self.entries, self.ignored = name, tuple(entries), tuple(ignored)
        layered = [entry.per_layer for entry in self.entries]
        if True not in layered:
            raise ValueError(f"table {name}: no per-layer entry")
        first, last = layered.index(True), len(layered) - 1 - layered[::-1].index(True)
        if not all(layered[first:last + 1]):
            raise ValueError(f"table {name}: the per-layer entries must be consecutive")
        self.head, self.layer, self.tail = self.entries[:first], self.entries[first:last + 1], self.entries[last + 1:]
        names = [n for entry in self.entries for n in (entry.megatron, *entry.aliases)]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"table {name}: megatron name {repeated[0]!r} is mapped twice")
        self._names = [(_regex(n), entry) for entry in self.entries for n in (entry.megatron, *entry.aliases)]
        self._ignored = [_regex(n) for n in self.ignored]

    def variant(self, name: str, *extra: ParamMapping) -> Table:
        """This table plus `extra` entries (per-layer ones are written after the base layer's tensors)."""
        layer = [e for e in extra if e.per_layer]
        other = [e for e in extra if not e.per_layer]
        return Table(name, [*self.head, *self.layer, *layer, *self.tail, *other], self.ignored)

    def find(self, megatron_name: str) -> tuple[ParamMapping, int | None]:
        """The entry of a built model's parameter name, with the (chunk-local) layer number in it."""
        for regex, entry in self._names:
            match = regex.match(megatron_name)
            if match:
                return entry, int(match.group(1)) if entry.per_layer else None
        raise UsageError(f"model parameter {megatron_name!r} has no Hugging Face counterpart")

    def walk(self, num_layers: int) -> list[tuple[ParamMapping, int | None]]:
        """(entry, layer) pairs in export order."""
        return ([(e, None) for e in self.head] + [(e, layer) for layer in range(num_layers) for e in self.layer]
                + [(e, None) for e in self.tail])

    def hf_plan(self, dims: Dims) -> list[tuple[str, tuple[int, ...]]]:
        """Every exported HF tensor with its shape, in writing order."""
        return [(at_layer(name, layer), dims.shape(shape)) for entry, layer in self.walk(dims.model.num_layers)
                for name, shape in entry.hf_shapes(dims).items()]

    def hf_sources(self, dims: Dims) -> dict[str, tuple[str, ...]]:
        """Every HF tensor the import reads, with its symbolic shape."""
        return {at_layer(name, layer): shape for entry, layer in self.walk(dims.model.num_layers)
                for name, shape in entry.hf_sources(dims).items()}

    def hf_tolerated(self, name: str, dims: Dims) -> bool:
        """Whether an HF tensor the import does not read may be skipped (a buffer, an untied copy, ...)."""
        tolerated = [_regex(n) for e in self.entries for n in e.hf_tolerated(dims)]
        return any(regex.match(name) for regex in self._ignored + tolerated)

    def vocab_entry(self) -> Vocab:
        """The first vocabulary-sized entry (the input embedding): its rows give the padded vocabulary."""
        return next(e for e in self.entries if isinstance(e, Vocab))


def export_entry(entry: ParamMapping, read: ReadMegatron, layer: int | None,
                 dims: Dims) -> list[tuple[str, torch.Tensor]]:
    """One entry (at one layer) as HF (name, tensor) pairs in writing order."""
    tensors = entry.export(read, dims)
    return [(at_layer(name, layer), tensors[name]) for name in entry.hf_shapes(dims)]


def import_entry(entry: ParamMapping, get: Callable[[str], torch.Tensor], layer: int | None,
                 dims: Dims) -> torch.Tensor:
    """One entry's global megatron tensor (at one layer) from HF tensors fetched by name; shapes checked."""
    hf = {}
    for name, shape in entry.hf_sources(dims).items():
        full_name = at_layer(name, layer)
        tensor = get(full_name)
        check_hf_shape(full_name, tuple(tensor.shape), shape, dims)
        hf[name] = tensor
    return entry.to_megatron(hf, dims)


def check_hf_shape(name: str, actual: tuple[int, ...], shape: tuple[str, ...], dims: Dims) -> None:
    expected = dims.shape(shape)
    if tuple(actual) != expected:
        raise UsageError(f"{name}: shape {tuple(actual)}, expected ({', '.join(shape)}) = {expected} "
                         "from config.json")


_L = "model.layers.*."
LLAMA = Table("llama", [
    Vocab("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
    Direct("decoder.layers.*.self_attention.linear_qkv.layer_norm_weight", _L + "input_layernorm.weight",
           ("hidden_size",), aliases=("decoder.layers.*.input_layernorm.weight",)),
    QKV("decoder.layers.*.self_attention.linear_qkv.weight", q=_L + "self_attn.q_proj.weight",
        k=_L + "self_attn.k_proj.weight", v=_L + "self_attn.v_proj.weight"),
    Direct("decoder.layers.*.self_attention.linear_proj.weight", _L + "self_attn.o_proj.weight",
           ("hidden_size", "heads x head_dim"), tp_dim=1),
    Direct("decoder.layers.*.mlp.linear_fc1.layer_norm_weight", _L + "post_attention_layernorm.weight",
           ("hidden_size",), aliases=("decoder.layers.*.pre_mlp_layernorm.weight",)),
    GatedMLP("decoder.layers.*.mlp.linear_fc1.weight", gate=_L + "mlp.gate_proj.weight", up=_L + "mlp.up_proj.weight"),
    Direct("decoder.layers.*.mlp.linear_fc2.weight", _L + "mlp.down_proj.weight",
           ("hidden_size", "intermediate_size"), tp_dim=1),
    Direct("decoder.final_layernorm.weight", "model.norm.weight", ("hidden_size",)),
    Vocab("output_layer.weight", "lm_head.weight", tied_to="model.embed_tokens.weight"),
], ignored=(_L + "self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"))

QWEN2 = LLAMA.variant("qwen2", QKV("decoder.layers.*.self_attention.linear_qkv.bias", q=_L + "self_attn.q_proj.bias",
                                   k=_L + "self_attn.k_proj.bias", v=_L + "self_attn.v_proj.bias", columns=()))


QWEN3 = LLAMA.variant(
    "qwen3",
    Direct("decoder.layers.*.self_attention.q_layernorm.weight", _L + "self_attn.q_norm.weight", ("head_dim",)),
    Direct("decoder.layers.*.self_attention.k_layernorm.weight", _L + "self_attn.k_norm.weight", ("head_dim",)),
)


def table_for(model: ModelConfig) -> Table:
    """The weight map of a model (Mistral uses Llama's; QK-norm is Qwen3's)."""
    if model.qk_norm and model.add_qkv_bias:
        raise UsageError("model.qk_norm with model.add_qkv_bias has no Hugging Face architecture to export to")
    if model.qk_norm:
        return QWEN3
    return QWEN2 if model.add_qkv_bias else LLAMA
