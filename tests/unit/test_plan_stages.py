"""The planner's pipeline layer split against megatron-core's own functions, and the per-stage parameters."""

from __future__ import annotations

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.model.params import count_parameters
from megatron_llm.planning.layer_split import PipelineSplit, balanced_first_last, layer_ranges, split_problem
from megatron_llm.planning.memory import stages_of

CASES = [
    (6, 4, 2, PipelineSplit(True, True)),
    (126, 8, 8, PipelineSplit(True, True)),
    (126, 8, None, PipelineSplit(first_stage_layers=14, last_stage_layers=16)),
    (10, 4, None, PipelineSplit(first_stage_layers=1, last_stage_layers=3)),
    (16, 4, 2, PipelineSplit(first_stage_layers=2, last_stage_layers=6)),
    (7, 4, None, PipelineSplit(account_for_embedding=True)),
    (9, 2, None, PipelineSplit(account_for_loss=True)),
    (8, 2, 2, PipelineSplit()),
]


def _megatron_ranges(layers: int, pipeline: int, virtual: int | None, split: PipelineSplit) -> list:
    import torch
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    from megatron.core.transformer.transformer_config import TransformerConfig
    from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

    config = TransformerConfig(
        num_layers=layers, hidden_size=8, num_attention_heads=2, pipeline_model_parallel_size=pipeline,
        virtual_pipeline_model_parallel_size=virtual, pipeline_dtype=torch.float32,
        account_for_embedding_in_pipeline_split=split.account_for_embedding,
        account_for_loss_in_pipeline_split=split.account_for_loss,
        num_layers_in_first_pipeline_stage=split.first_stage_layers,
        num_layers_in_last_pipeline_stage=split.last_stage_layers,
    )
    chunks = range(virtual) if virtual else [None]
    ranges = []
    for rank in range(pipeline):
        row = []
        for chunk in chunks:
            start = get_transformer_layer_offset(config, vp_stage=chunk, pp_rank=rank)
            row.append((start, start + get_num_layers_to_build(config, vp_stage=chunk, pp_rank=rank)))
        ranges.append(row)
    return ranges


@pytest.mark.parametrize("layers, pipeline, virtual, split", CASES)
def test_split_matches_megatron_core(layers: int, pipeline: int, virtual: int | None, split: PipelineSplit) -> None:
    assert split_problem(layers, pipeline, virtual, split) is None
    ours = layer_ranges(layers, pipeline, virtual, split)
    assert ours == _megatron_ranges(layers, pipeline, virtual, split)
    covered = sorted(layer for row in ours for start, end in row for layer in range(start, end))
    assert covered == list(range(layers))


def test_a_wrong_offset_is_caught() -> None:
    """Negative control: the even split's offsets for 6 layers over 4 x 2 differ from megatron-core's E+L split."""
    split = PipelineSplit(True, True)
    even_shaped = [[(2 * r, 2 * r + 1), (2 * r + 8, 2 * r + 9)] for r in range(4)]
    assert even_shaped != _megatron_ranges(6, 4, 2, split)


@pytest.mark.parametrize(
    "layers, pipeline, virtual, split, message",
    [
        (126, 8, 8, PipelineSplit(), "not divisible"),
        (126, 8, 3, PipelineSplit(True, True), "not divisible"),
        (10, 4, None, PipelineSplit(True, first_stage_layers=1), "cannot be combined"),
        (10, 4, 2, PipelineSplit(first_stage_layers=1), "not divisible by the virtual"),
    ],
)
def test_megatron_core_refusals(layers: int, pipeline: int, virtual: int | None, split: PipelineSplit,
                                message: str) -> None:
    assert message in split_problem(layers, pipeline, virtual, split)


def test_balanced_first_last_for_126_layers_on_8_stages() -> None:
    split = balanced_first_last(126, 8, None)
    assert split == PipelineSplit(first_stage_layers=14, last_stage_layers=16)
    assert balanced_first_last(126, 8, 8) is None  # 126 - 16 (first and last, multiples of 8) is odd per stage


def test_stage_parameters_follow_the_uneven_split() -> None:
    config = load_config(None, ["model.num_layers=6", "parallel.pipeline=4", "parallel.virtual_pipeline=2",
                                "model.vocab_size=1000"])
    stages = stages_of(config, PipelineSplit(True, True))
    per_layer = count_parameters(config.model).per_layer
    layers = [sum(end - start for start, end in stage.layers) for stage in stages]
    assert layers == [1, 2, 2, 1]
    counts = count_parameters(config.model)
    assert sum(stage.numel for stage in stages) == counts.built_total
    hidden = config.model.hidden_size
    assert stages[0].numel == per_layer + counts.padded_vocab_size * hidden  # one layer + the embedding
    assert stages[3].numel == per_layer + hidden + counts.padded_vocab_size * hidden  # + final norm + output
