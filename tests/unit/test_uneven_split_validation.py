"""`parallel.account_for_embedding`/`account_for_loss`/`first_stage_layers`/`last_stage_layers`: the config check
accepts exactly the splits megatron-core 0.16.1 can build, and names the fields when it refuses one."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from megatron_llm.config import load_config
from megatron_llm.config.validation import layout_problems
from megatron_llm.model.builder import transformer_config
from megatron_llm.runtime.hardware import detect_platform


def _sets(layers: int, pipeline: int, virtual: int | None, embedding: bool, loss: bool, first: int | None,
          last: int | None) -> list[str]:
    sets = [f"model.num_layers={layers}", f"parallel.pipeline={pipeline}",
            f"parallel.account_for_embedding={str(embedding).lower()}",
            f"parallel.account_for_loss={str(loss).lower()}"]
    sets += [f"parallel.virtual_pipeline={virtual}"] if virtual else []
    sets += [f"parallel.first_stage_layers={first}"] if first is not None else []
    sets += [f"parallel.last_stage_layers={last}"] if last is not None else []
    return sets


def _config(base, layers: int, pipeline: int, virtual: int | None, embedding: bool, loss: bool, first: int | None,
            last: int | None):
    """`base` with the split set in code (loading YAML for each of the grid's cases would take a minute)."""
    config = copy.deepcopy(base)
    config.model.num_layers = layers
    config.parallel.pipeline, config.parallel.virtual_pipeline = pipeline, virtual
    config.parallel.account_for_embedding, config.parallel.account_for_loss = embedding, loss
    config.parallel.first_stage_layers, config.parallel.last_stage_layers = first, last
    return config


def _megatron_builds(config) -> bool:
    """megatron-core's verdict: its TransformerConfig accepts the split and every model chunk of every pipeline
    rank builds a non-negative number of layers without tripping its asserts."""
    from megatron.core.transformer.transformer_block import get_num_layers_to_build

    try:
        tconfig = transformer_config(config, detect_platform())
        chunks = range(config.parallel.virtual_pipeline) if config.parallel.virtual_pipeline else [None]
        counts = [get_num_layers_to_build(tconfig, vp_stage=chunk, pp_rank=rank)
                  for rank in range(config.parallel.pipeline) for chunk in chunks]
    except (ValueError, AssertionError):
        return False
    return min(counts) >= 0 and sum(counts) == config.model.num_layers


SPLITS = [(emb, loss, None, None) for emb, loss in ((True, False), (False, True), (True, True))]
SPLITS += [(False, False, first, last) for first, last in itertools.product([None, 1, 2, 3, 4], repeat=2)
           if (first, last) != (None, None)]
SPLITS += [(True, False, 1, None), (False, True, None, 2)]  # megatron-core refuses these combinations


def test_layout_check_accepts_exactly_what_megatron_core_builds():
    base = load_config("examples/configs/tiny.yaml")
    checked = accepted = 0
    for layers, pipeline, virtual, split in itertools.product(range(1, 10), (2, 3, 4), (None, 2, 3), SPLITS):
        config = _config(base, layers, pipeline, virtual, *split)
        world = pipeline
        ours = not [p for p in layout_problems(config, world) if p.startswith("model.num_layers=")]
        theirs = _megatron_builds(config)
        assert ours == theirs, (layers, pipeline, virtual, split, layout_problems(config, world))
        checked += 1
        accepted += ours
    # Both verdicts occur often: the comparison is not vacuous.
    assert checked == 9 * 3 * 3 * len(SPLITS)
    assert 100 < accepted < checked - 100, accepted


def test_the_old_even_rule_would_refuse_splits_megatron_core_builds():
    """Negative control: num_layers % (PP x VPP), the rule before uneven stages, rejects the brief's layout."""
    config = load_config("examples/configs/tiny.yaml", _sets(6, 4, 2, True, True, None, None))
    assert _megatron_builds(config)
    assert 6 % (4 * 2) != 0
    assert layout_problems(config, 4) == []


@pytest.mark.parametrize(
    "sets, expected",
    [
        (_sets(4, 4, None, True, False, None, None),
         "model.num_layers=4 does not split over parallel.pipeline=4, parallel.virtual_pipeline=1 with "
         "parallel.account_for_embedding=true: num_layers=4 + 1 is not divisible by parallel.pipeline=4"),
        (_sets(4, 2, None, False, True, 1, None), "parallel.account_for_loss=true, parallel.first_stage_layers=1"),
        (_sets(6, 2, 2, False, False, 1, None), "parallel.first_stage_layers=1 is not divisible by the virtual"),
        (_sets(6, 2, None, False, False, 0, None), "parallel.first_stage_layers must be positive, got 0"),
    ],
)
def test_refused_splits_name_the_fields(sets, expected):
    problems = layout_problems(load_config("examples/configs/tiny.yaml", sets), 4)
    assert any(expected in problem for problem in problems), problems


def test_fields_reach_megatron_core():
    config = load_config("examples/configs/tiny.yaml", _sets(6, 2, None, False, False, 2, 4))
    tconfig = transformer_config(config, detect_platform())
    assert (tconfig.num_layers_in_first_pipeline_stage, tconfig.num_layers_in_last_pipeline_stage) == (2, 4)
    config = load_config("examples/configs/tiny.yaml", _sets(6, 4, 2, True, True, None, None))
    tconfig = transformer_config(config, detect_platform())
    assert tconfig.account_for_embedding_in_pipeline_split and tconfig.account_for_loss_in_pipeline_split
    assert tconfig.pipeline_dtype == torch.float32
