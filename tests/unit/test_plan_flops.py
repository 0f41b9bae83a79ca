"""FLOPs per step equal Megatron-LM's own accounting (training.py, num_floating_point_operations)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.config.schema import ModelConfig
from megatron_llm.model.flops import flops_per_step, flops_per_token
from megatron_llm.model.vocab import padded_vocab_size

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def megatron_lm_flops(args: SimpleNamespace, batch_size: int) -> float:
    """Megatron-LM's dense-transformer accounting, restated term by term with its argument names."""
    forward_backward_expansion_factor = 3
    fma_expansion_factor = 2
    ffn_expansion_factor = 3 if args.swiglu else 2
    query_projection_size = args.kv_channels * args.num_attention_heads
    key_projection_size = args.kv_channels * args.num_query_groups
    value_projection_size = args.kv_channels * args.num_query_groups
    standard_self_attn_term = forward_backward_expansion_factor * fma_expansion_factor * (
        args.hidden_size * (query_projection_size + key_projection_size + value_projection_size)
        + query_projection_size * args.seq_length / 2 * 2
        + query_projection_size * args.hidden_size
    )
    return batch_size * args.seq_length * (
        forward_backward_expansion_factor * fma_expansion_factor * args.hidden_size
        * (args.ffn_hidden_size * ffn_expansion_factor) * args.num_layers
        + standard_self_attn_term * args.num_layers
        + forward_backward_expansion_factor * fma_expansion_factor * args.hidden_size * args.padded_vocab_size
    )


def _args(model: ModelConfig, seq_length: int, tensor_parallel: int) -> SimpleNamespace:
    return SimpleNamespace(
        swiglu=True,
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        num_query_groups=model.query_groups,
        kv_channels=model.head_dim,
        seq_length=seq_length,
        padded_vocab_size=padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, tensor_parallel),
    )


@pytest.mark.parametrize("name", ["tiny", "llama-125m", "llama-7b", "llama-8b", "llama-70b", "mistral-7b"])
@pytest.mark.parametrize("tensor_parallel", [1, 8])
def test_matches_megatron_lm(name: str, tensor_parallel: int) -> None:
    config = load_config(CONFIGS / f"{name}.yaml")
    seq, batch = config.data.seq_length, config.schedule.global_batch_size
    ours = flops_per_step(config.model, seq, batch, tensor_parallel=tensor_parallel)
    reference = megatron_lm_flops(_args(config.model, seq, tensor_parallel), batch)
    assert ours == pytest.approx(reference, rel=1e-12)


def test_llama2_7b_by_hand() -> None:
    model = load_config(CONFIGS / "llama-7b.yaml").model
    gemm = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32000
    attention = 6 * 32 * 4096 * 4096
    per_token = flops_per_token(model, 4096)
    assert per_token.gemm_params == gemm
    assert per_token.model == 6 * gemm + attention == 42_863_689_728
    assert flops_per_step(model, 4096, 1024) == per_token.model * 4096 * 1024


def test_vocab_padding_depends_on_tensor_parallel() -> None:
    model = ModelConfig(vocab_size=1100)
    assert flops_per_step(model, 32, 8, tensor_parallel=2) - flops_per_step(model, 32, 8) == 6 * 64 * 128 * 32 * 8
    assert flops_per_step(ModelConfig(), 32, 8, vocab_size=1100) == flops_per_step(model, 32, 8)


def test_recompute_is_hardware_only() -> None:
    model = load_config(CONFIGS / "llama-7b.yaml").model
    none = flops_per_token(model, 4096, recompute="none")
    full = flops_per_token(model, 4096, recompute="full")
    selective = flops_per_token(model, 4096, recompute="selective")
    assert none.model == full.model == selective.model
    assert none.recompute == 0
    assert selective.recompute == 2 * 32 * 4096 * 4096  # one more forward of QK^T and (QK^T)V
    assert full.recompute == none.dense // 3 + none.attention // 3  # one more forward of every layer
