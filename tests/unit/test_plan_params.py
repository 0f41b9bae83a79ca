"""Exact parameter counts from the architecture alone, whole and per rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.config.schema import ModelConfig
from megatron_llm.errors import UsageError
from megatron_llm.model.params import count_parameters, layer_ranges, stage_parameters

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


@pytest.mark.parametrize(
    "name, published",
    [
        ("llama-7b", 6_738_415_616),  # Llama-2-7B
        ("llama-13b", 13_015_864_320),  # Llama-2-13B
        ("llama-8b", 8_030_261_248),  # Llama-3-8B
        ("llama-70b", 70_553_706_496),  # Llama-3-70B
        ("mistral-7b", 7_241_732_096),  # Mistral-7B-v0.1
    ],
)
def test_published_models(name: str, published: int) -> None:
    counts = count_parameters(load_config(CONFIGS / f"{name}.yaml").model)
    assert counts.total == published
    assert counts.total == counts.embedding + counts.output_layer + counts.non_embedding


def test_padding_is_reported_separately() -> None:
    model = load_config(CONFIGS / "llama-70b.yaml").model
    plain = count_parameters(model, tensor_parallel=1)
    assert plain.padded_vocab_size == 128_256 and plain.vocab_padding == 0
    sharded = count_parameters(model, tensor_parallel=8)
    # 128256 is not a multiple of 128 x 8: megatron-core builds 129024 rows per matrix
    assert sharded.padded_vocab_size == 129_024
    assert sharded.total == plain.total == 70_553_706_496
    assert sharded.vocab_padding == (129_024 - 128_256) * 8192 * 2
    assert sharded.built_total == sharded.total + sharded.vocab_padding


def test_tied_embeddings_count_one_matrix() -> None:
    model = ModelConfig(vocab_size=1000, tie_embeddings=True)
    counts = count_parameters(model)
    assert counts.output_layer == 0
    assert counts.vocab_padding == 24 * 64  # padded to 1024, one matrix


def test_qkv_bias_adds_q_plus_2kv_per_layer() -> None:
    base = ModelConfig(vocab_size=512, num_query_groups=2)
    biased = ModelConfig(vocab_size=512, num_query_groups=2, add_qkv_bias=True)
    assert count_parameters(biased).total - count_parameters(base).total == 4 * (64 + 2 * 32)


def test_layer_ranges_interleave_chunks() -> None:
    assert layer_ranges(8, 2, 2, 0) == [(0, 2), (4, 6)]
    assert layer_ranges(8, 2, 2, 1) == [(2, 4), (6, 8)]
    assert layer_ranges(8, 2, None, 1) == [(4, 8)]


def test_stages_sum_to_the_built_model() -> None:
    model = ModelConfig(vocab_size=1100, num_query_groups=2)
    counts = count_parameters(model, tensor_parallel=2)
    stages = stage_parameters(model, tensor_parallel=2, pipeline=2, virtual=2)
    assert stages[0].has_embedding and not stages[0].has_output_layer
    assert stages[1].has_output_layer and not stages[1].tied_embedding_copy
    norms_per_rank = 2 * model.num_layers * model.hidden_size + model.hidden_size
    # TP shards add up to the model, except the RMSNorm weights every TP rank holds whole
    assert 2 * sum(s.numel for s in stages) == counts.built_total + norms_per_rank


def test_tied_embeddings_put_a_copy_on_the_last_stage() -> None:
    model = ModelConfig(vocab_size=512, tie_embeddings=True)
    single = stage_parameters(model)
    assert [t.name for t in single[0].chunks[0]].count("output_layer.weight") == 0
    first, last = stage_parameters(model, pipeline=2)
    assert last.tied_embedding_copy
    assert last.chunks[-1][-1].name == "output_layer.weight" and last.chunks[-1][-1].shared_embedding
    assert first.chunks[0][0].shared_embedding
    assert first.numel + last.numel == count_parameters(model).built_total + 512 * 64


def test_missing_vocab_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="model.vocab_size"):
        count_parameters(ModelConfig())
