"""Training FLOPs with Megatron-LM's accounting (`num_floating_point_operations` in its training.py).

Per token, for a dense Llama-style model (SwiGLU, GQA, no MoE):

    6 x [ L x (h(q + 2kv) + qh + 3hf) + hV ]      every GEMM: forward, weight grad, input grad (3)
                                                  x 2 FLOPs per multiply-add
  + 6 x L x q x s                                 QK^T and (QK^T)V, halved for the causal mask

where q = heads x head_dim, kv = query_groups x head_dim, f = ffn_hidden_size, V the padded vocabulary
and s the sequence length. The first line is 6N with N the parameters that take part in a GEMM
(every linear layer and the output layer; not the embedding lookup, not the norms). These are model
FLOPs: MFU divides them by time and peak, so activation recompute does not change them. The extra
work recompute makes the hardware do is reported separately (`FlopsPerToken.recompute`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_llm.config.schema import ModelConfig
from megatron_llm.model.params import vocab_size_of
from megatron_llm.model.vocab import padded_vocab_size


@dataclass(frozen=True)
class FlopsPerToken:
    """Model FLOPs per trained token, split as the formula is; `recompute` is hardware-only extra."""

    gemm_params: int
    dense: int
    attention: int
    logits: int
    recompute: int

    @property
    def model(self) -> int:
        return self.dense + self.attention + self.logits

    @property
    def hardware(self) -> int:
        return self.model + self.recompute


def flops_per_token(
    model: ModelConfig,
    seq_length: int,
    tensor_parallel: int = 1,
    recompute: str | None = None,
    vocab_size: int | None = None,
) -> FlopsPerToken:
    """FLOPs per token; `recompute` defaults to `model.recompute`, `vocab_size` to `model.vocab_size`."""
    h, f, s, layers = model.hidden_size, model.ffn_hidden_size, seq_length, model.num_layers
    q = model.num_attention_heads * model.head_dim
    kv = model.query_groups * model.head_dim
    vocab = padded_vocab_size(vocab_size_of(model, vocab_size), model.make_vocab_size_divisible_by, tensor_parallel)
    layer_gemm = h * (q + 2 * kv) + q * h + 3 * h * f
    attention_forward = 2 * layers * q * s
    mode = model.recompute if recompute is None else recompute
    if mode == "full":
        extra = 2 * layers * layer_gemm + attention_forward
    elif mode == "selective":
        extra = attention_forward
    else:
        extra = 0
    return FlopsPerToken(
        gemm_params=layers * layer_gemm + h * vocab,
        dense=6 * layers * layer_gemm,
        attention=3 * attention_forward,
        logits=6 * h * vocab,
        recompute=extra,
    )


def flops_per_step(
    model: ModelConfig,
    seq_length: int,
    global_batch_size: int,
    tensor_parallel: int = 1,
    vocab_size: int | None = None,
) -> int:
    """Model FLOPs of one optimizer step (global batch), as Megatron-LM counts them for TFLOP/s and MFU.

    `tensor_parallel` matters through the vocabulary padding (a multiple of divisible_by x TP);
    `vocab_size` is the tokenizer's (unpadded) size when `model.vocab_size` is not set.
    Per-device TFLOP/s = flops_per_step / step_seconds / world_size / 1e12.
    """
    per_token = flops_per_token(model, seq_length, tensor_parallel, vocab_size=vocab_size)
    return per_token.model * seq_length * global_batch_size
