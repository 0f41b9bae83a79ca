"""Exact parameter counts of the Llama-style GPTModel the engine builds, whole and per rank.

Pure arithmetic (no torch): `plan` runs it for 70B models in milliseconds. The tensors are listed in the
order megatron-core's GPTModel registers them (local spec), because the DDP buffer padding of the
distributed optimizer depends on the order and sizes of the tensors each rank holds.

Two vocabulary sizes appear: the tokenizer's (`model.vocab_size`), which published counts use, and
the padded one megatron-core builds (a multiple of `make_vocab_size_divisible_by x TP`). The padding
rows are real parameters of the built model and are reported separately, never folded in silently.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_llm.config.schema import ModelConfig
from megatron_llm.errors import UsageError
from megatron_llm.model.vocab import padded_vocab_size


@dataclass(frozen=True)
class ParamTensor:
    """One parameter tensor as held by one tensor-parallel rank."""

    name: str
    numel: int
    shared_embedding: bool = False


@dataclass(frozen=True)
class ParameterCounts:
    """Whole-model counts; `total` uses the tokenizer vocabulary, `built_total` the padded one."""

    total: int
    embedding: int
    output_layer: int
    non_embedding: int
    per_layer: int
    vocab_size: int
    padded_vocab_size: int
    vocab_padding: int
    built_total: int


@dataclass(frozen=True)
class StageParameters:
    """What one pipeline rank holds; `numel` is per tensor-parallel rank (TP ranks hold equal shards)."""

    pipeline_rank: int
    layers: tuple[tuple[int, int], ...]
    has_embedding: bool
    has_output_layer: bool
    tied_embedding_copy: bool
    chunks: tuple[tuple[ParamTensor, ...], ...]

    @property
    def numel(self) -> int:
        return sum(t.numel for chunk in self.chunks for t in chunk)


def vocab_size_of(model: ModelConfig, vocab_size: int | None = None) -> int:
    """The unpadded vocabulary: an explicit size (e.g. the tokenizer's) or `model.vocab_size`."""
    size = vocab_size if vocab_size is not None else model.vocab_size
    if size is None:
        raise UsageError("model.vocab_size must be set to count parameters (set it to the tokenizer's size)")
    return size


def _q_kv(model: ModelConfig) -> tuple[int, int]:
    return model.num_attention_heads * model.head_dim, model.query_groups * model.head_dim


def layer_tensors(model: ModelConfig, layer: int, tensor_parallel: int = 1) -> list[ParamTensor]:
    """One transformer layer's tensors on one TP rank; RMSNorm weights are replicated across TP."""
    h, f, tp = model.hidden_size, model.ffn_hidden_size, tensor_parallel
    q, kv = _q_kv(model)
    prefix = f"decoder.layers.{layer}."
    tensors = [
        ParamTensor(prefix + "input_layernorm.weight", h),
        ParamTensor(prefix + "self_attention.linear_proj.weight", h * q // tp),
        ParamTensor(prefix + "self_attention.linear_qkv.weight", (q + 2 * kv) * h // tp),
    ]
    if model.add_qkv_bias:
        tensors.append(ParamTensor(prefix + "self_attention.linear_qkv.bias", (q + 2 * kv) // tp))
    tensors += [
        ParamTensor(prefix + "pre_mlp_layernorm.weight", h),
        ParamTensor(prefix + "mlp.linear_fc1.weight", 2 * f * h // tp),
        ParamTensor(prefix + "mlp.linear_fc2.weight", h * f // tp),
    ]
    return tensors


def count_parameters(model: ModelConfig, tensor_parallel: int = 1, vocab_size: int | None = None) -> ParameterCounts:
    """Exact counts of the whole model; the padded vocabulary depends on the TP size."""
    vocab = vocab_size_of(model, vocab_size)
    padded = padded_vocab_size(vocab, model.make_vocab_size_divisible_by, tensor_parallel)
    h = model.hidden_size
    per_layer = sum(t.numel for t in layer_tensors(model, 0))
    body = per_layer * model.num_layers + h
    matrices = 1 if model.tie_embeddings else 2
    embedding = vocab * h
    output = 0 if model.tie_embeddings else vocab * h
    total = body + embedding + output
    return ParameterCounts(
        total=total,
        embedding=embedding,
        output_layer=output,
        non_embedding=body,
        per_layer=per_layer,
        vocab_size=vocab,
        padded_vocab_size=padded,
        vocab_padding=(padded - vocab) * h * matrices,
        built_total=body + padded * h * matrices,
    )


def layer_ranges(num_layers: int, pipeline: int, virtual: int | None, pipeline_rank: int) -> list[tuple[int, int]]:
    """Global [start, end) layer ranges of each model chunk on a pipeline rank (megatron's even split)."""
    vpp = virtual or 1
    per_chunk = num_layers // (pipeline * vpp)
    return [
        ((chunk * pipeline + pipeline_rank) * per_chunk, (chunk * pipeline + pipeline_rank + 1) * per_chunk)
        for chunk in range(vpp)
    ]


def stage_parameters(
    model: ModelConfig,
    tensor_parallel: int = 1,
    pipeline: int = 1,
    virtual: int | None = None,
    vocab_size: int | None = None,
    ranges: list[list[tuple[int, int]]] | None = None,
) -> list[StageParameters]:
    """Per pipeline rank: its chunks' tensors, and where the embedding and output layer live.

    `ranges[rank]` overrides the even split with each chunk's [start, end) layers (uneven first/last
    stages; `megatron_llm.planning.layer_split` computes them as megatron-core does).

    The embedding is on the first stage (its first chunk), the output layer and final norm on the last
    stage (its last chunk). With tied embeddings and more than one stage, the last stage holds its own
    copy of the embedding matrix as its output weight (kept equal by an all-reduce).
    """
    vocab = vocab_size_of(model, vocab_size)
    padded = padded_vocab_size(vocab, model.make_vocab_size_divisible_by, tensor_parallel)
    vocab_shard = padded // tensor_parallel * model.hidden_size
    vpp = virtual if (virtual or 1) > 1 else None
    stages = []
    for rank in range(pipeline):
        rank_ranges = ranges[rank] if ranges is not None else layer_ranges(model.num_layers, pipeline, vpp, rank)
        chunks = []
        for index, (start, end) in enumerate(rank_ranges):
            first = rank == 0 and index == 0
            last = rank == pipeline - 1 and index == len(rank_ranges) - 1
            tensors = []
            if first:
                shared = model.tie_embeddings and pipeline > 1
                tensors.append(ParamTensor("embedding.word_embeddings.weight", vocab_shard, shared))
            for local, _ in enumerate(range(start, end)):
                tensors += layer_tensors(model, local, tensor_parallel)
            if last:
                tensors.append(ParamTensor("decoder.final_layernorm.weight", model.hidden_size))
                if not model.tie_embeddings or not first:
                    tensors.append(ParamTensor("output_layer.weight", vocab_shard, model.tie_embeddings))
            chunks.append(tuple(tensors))
        stages.append(
            StageParameters(
                pipeline_rank=rank,
                layers=tuple(rank_ranges),
                has_embedding=rank == 0,
                has_output_layer=rank == pipeline - 1,
                tied_embedding_copy=model.tie_embeddings and pipeline > 1 and rank == pipeline - 1,
                chunks=tuple(chunks),
            )
        )
    return stages
