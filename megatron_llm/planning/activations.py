"""Activation memory: what autograd keeps per transformer layer, and how many layers' worth are alive.

Per layer and micro-batch of T tokens (T = micro_batch x seq_length / CP), with `a` bytes per element,
TP size t, and h-sized tensors split t ways only under sequence parallelism (divisor `sp`):

    input norm: its input (a·T·h/sp) + fp32 rstd           QKV GEMM input: a·T·h/sp
    q, k, v after RoPE: a·T·(q + 2kv)/t                     attention output (= proj input): a·T·q/t
    flash-attention log-sum-exp: 4·T·heads/t               MLP norm input + fc1 input: 2·a·T·h/sp
    SwiGLU input (fc1 output): a·T·2f/t                     fc2 input: a·T·f/t

Under FP8 with Transformer Engine the four GEMM inputs (QKV, attention projection, fc1, fc2) are kept as
their 1-byte FP8 casts for the weight gradients instead of 16-bit copies (the projection's input is still
kept in 16 bits as flash attention's output).
Without flash attention (megatron-core's local spec, the CPU path) the softmax output of
heads/t x s x s per sequence is kept too. Selective recompute (megatron-core recomputes core attention)
drops the s x s tensors and the log-sum-exp; full recompute keeps only each recompute unit's input
(`recompute_num_layers` layers) and rebuilds one unit's activations at a time in the backward pass. The
`block` method recomputes only the first `recompute_num_layers` layers of each model chunk, one layer per
unit, and keeps everything for the others; those first layers are rebuilt at the end of the chunk's
backward pass, when its kept layers have been freed, so the rebuilt layer is not on top of the peak.

Pipeline schedules keep several micro-batches in flight: with 1F1B, stage r holds min(m, p - r); with
the interleaved schedule, stage r holds min(m·v, 2(p - r - 1) + (v - 1)p + 1) chunk-micro-batches of
L/(p·v) layers each — the first stage is the most loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_llm.config.schema import ModelConfig

FP32 = 4


@dataclass(frozen=True)
class ActivationShape:
    """The knobs activation memory depends on."""

    seq_length: int
    micro_batch: int
    tensor_parallel: int = 1
    context_parallel: int = 1
    sequence_parallel: bool = False
    recompute: str = "none"
    recompute_num_layers: int = 1
    recompute_method: str = "uniform"
    bytes_per_element: int = 2
    flash_attention: bool = True
    fp8_gemm_inputs: bool = False

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_length // self.context_parallel


def layer_bytes(model: ModelConfig, shape: ActivationShape, recompute: str = "none") -> int:
    """Bytes one transformer layer keeps for backward for one micro-batch under a recompute mode."""
    t, tokens, a = shape.tensor_parallel, shape.tokens, shape.bytes_per_element
    sp = t if shape.sequence_parallel else 1
    h, f = model.hidden_size, model.ffn_hidden_size
    heads = model.num_attention_heads
    q = heads * model.head_dim
    kv = model.query_groups * model.head_dim
    if recompute == "full":
        return a * tokens * h // sp
    g = 1 if shape.fp8_gemm_inputs else a
    hidden = (2 * a + 2 * g) * tokens * h // sp + 2 * FP32 * tokens // sp
    attention = a * tokens * (2 * q + 2 * kv) // t + (g * tokens * q // t if shape.fp8_gemm_inputs else 0)
    mlp = (2 * a + g) * tokens * f // t
    masks = 2 * tokens * h // sp if model.hidden_dropout > 0 else 0
    if recompute == "selective":
        core = 0
    elif shape.flash_attention:
        core = FP32 * tokens * heads // t
    else:
        sequences = shape.micro_batch
        keys = shape.seq_length // shape.context_parallel
        scores = heads // t * sequences * keys * keys
        core = a * scores + (scores if model.attention_dropout > 0 else 0)
    return hidden + attention + mlp + masks + core


def in_flight(num_microbatches: int, pipeline: int, virtual: int | None, pipeline_rank: int) -> int:
    """Model-chunk micro-batches whose activations a pipeline rank holds at its peak."""
    if pipeline == 1:
        return 1
    vpp = virtual or 1
    if vpp == 1:
        return min(num_microbatches, pipeline - pipeline_rank)
    warmup = 2 * (pipeline - pipeline_rank - 1) + (vpp - 1) * pipeline
    return min(num_microbatches * vpp, warmup + 1)


def rank_activation_bytes(
    model: ModelConfig,
    shape: ActivationShape,
    pipeline: int,
    virtual: int | None,
    pipeline_rank: int,
    num_microbatches: int,
    rank_layers: int | None = None,
) -> int:
    """Peak activation bytes on one pipeline rank: in-flight layers plus one recompute unit.

    `rank_layers` is the rank's transformer layers under an uneven split (default: the even share);
    its chunks then count as rank_layers / VPP layers each.
    """
    vpp = virtual if (virtual or 1) > 1 else None
    if rank_layers is None:
        rank_layers = model.num_layers // pipeline
    layers_per_chunk = -(-rank_layers // (vpp or 1))
    chunks = in_flight(num_microbatches, pipeline, vpp, pipeline_rank)
    if shape.recompute == "full" and shape.recompute_method == "block":
        recomputed = min(shape.recompute_num_layers, layers_per_chunk)
        kept = layers_per_chunk - recomputed
        per_chunk = recomputed * layer_bytes(model, shape, "full") + kept * layer_bytes(model, shape, "none")
        # The checkpointed layers come first in the chunk, so the backward pass rebuilds them last, after
        # this chunk-micro-batch's kept layers have been freed: the rebuilt layer adds to the peak only when
        # no layer is kept.
        total = chunks * per_chunk + (layer_bytes(model, shape, "none") if recomputed and not kept else 0)
    elif shape.recompute == "full":
        unit = max(1, min(shape.recompute_num_layers, layers_per_chunk))
        units = -(-layers_per_chunk // unit)
        total = chunks * units * layer_bytes(model, shape, "full") + unit * layer_bytes(model, shape, "none")
    else:
        total = chunks * layers_per_chunk * layer_bytes(model, shape, shape.recompute)
    if pipeline_rank == 0:
        total += min(num_microbatches, pipeline) * 8 * shape.tokens  # int64 token ids of the embedding lookup
    return total
