"""megatron's `block` recompute method in the planner: memory and time against closed forms of what megatron
does with it (TransformerBlock._checkpointed_forward: in each model chunk the first recompute_num_layers layers
are checkpointed one layer at a time, the others keep all their activations; the backward pass rebuilds the
checkpointed layers last, after the chunk's kept layers are freed, so a rebuilt layer adds to the peak only when
every layer of the chunk is checkpointed), and the layout round trip."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.planning.activations import ActivationShape, layer_bytes, rank_activation_bytes
from megatron_llm.planning.gpus import lookup_gpu
from megatron_llm.planning.layouts import layout_of
from megatron_llm.planning.perf_model import Workload, step_time

LLAMA_8B = "examples/configs/llama-8b.yaml"


def _shape(method: str, layers: int) -> ActivationShape:
    return ActivationShape(seq_length=8192, micro_batch=1, recompute="full", recompute_num_layers=layers,
                           recompute_method=method, fp8_gemm_inputs=True)


@pytest.mark.parametrize("pipeline,virtual,microbatches", [(1, None, 16), (4, None, 16), (4, 2, 16)])
def test_block_memory_is_kept_layers_on_top_of_recomputing_all(pipeline: int, virtual: int | None,
                                                               microbatches: int) -> None:
    model = load_config(LLAMA_8B).model
    per_chunk = model.num_layers // (pipeline * (virtual or 1))
    layer = layer_bytes(model, _shape("block", 1), "none")
    kept_extra = layer - layer_bytes(model, _shape("block", 1), "full")

    def block(n: int) -> int:
        return rank_activation_bytes(model, _shape("block", n), pipeline, virtual, 0, microbatches)

    every = rank_activation_bytes(model, _shape("uniform", 1), pipeline, virtual, 0, microbatches)
    assert block(per_chunk) == every  # all layers recomputed one at a time: megatron's uniform with 1 layer
    # with a kept layer, the layer being rebuilt (part of `every`) is no longer on top of the peak
    in_flight = (block(per_chunk - 1) - every + layer) // kept_extra
    for n in range(1, per_chunk):
        assert block(n) - every == in_flight * (per_chunk - n) * kept_extra - layer
    assert in_flight >= 1
    # negative control: the uniform method with the same number is far smaller (it recomputes every layer)
    assert rank_activation_bytes(model, _shape("uniform", 1), pipeline, virtual, 0, microbatches) < block(1) / 2


def test_block_recompute_time_is_its_share_of_full_recompute() -> None:
    model = load_config(LLAMA_8B).model
    base = Workload(model, 8192, 128, 1, 1, 1, None, 1, 8, "fp8", lookup_gpu("h100"), recompute="full")
    every = step_time(base).recompute
    five = step_time(dataclasses.replace(base, recompute_layers=5)).recompute
    assert five == pytest.approx(every * 5 / 32, rel=1e-12)
    assert step_time(dataclasses.replace(base, recompute="none")).recompute == 0


def test_layout_round_trip_of_the_recipe_config() -> None:
    config = load_config(LLAMA_8B)
    layout = layout_of(config, 8)
    assert layout.recompute_block == 5 and "recompute=full/block5" in layout.label()
    applied = layout.apply(load_config(LLAMA_8B, ["model.recompute=none", "model.recompute_method=uniform"]))
    assert (applied.model.recompute, applied.model.recompute_method, applied.model.recompute_num_layers) == \
        ("full", "block", 5)
    uniform = dataclasses.replace(layout, recompute_block=None).apply(config)
    assert (uniform.model.recompute_method, uniform.model.recompute_num_layers) == ("uniform", 1)
