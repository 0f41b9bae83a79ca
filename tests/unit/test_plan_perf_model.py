"""The step-time model against NVIDIA's published DGX-H100 results, and its monotonic sanity.

Published figures (Megatron-Bridge performance summary, DGX-H100, FP8 current scaling, seq 8192, MBS 1,
https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/performance-summary.md): NeMo 26.04.01 for
Llama-3-70B and Llama-3.1-405B, NeMo 25.11 for Llama-3-8B. The recipes overlap TP communication
(Transformer Engine userbuffers) and reduce gradients in bf16 (grad_reduce_in_fp32=False); the 405B
recipe counts the embedding and the loss as pipeline layers; the 8B one recomputes 5 layers (block).
Tolerance 15%: the acceptance bound of the model (seven calibration constants serve every GPU and model).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.planning import calibration
from megatron_llm.planning.gpus import lookup_gpu
from megatron_llm.planning.layer_split import PipelineSplit
from megatron_llm.planning.perf_model import Workload, step_time

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"
LLAMA_405B = ["model.num_layers=126", "model.hidden_size=16384", "model.ffn_hidden_size=53248",
              "model.num_attention_heads=128"]
H100 = lookup_gpu("h100")


def _model(name: str, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", list(overrides)).model


def published() -> dict[str, tuple[Workload, float, float]]:
    """name: (the published run as a workload, tokens/s/GPU, TFLOP/s/GPU)."""
    recipe = dict(precision="fp8", gpu=H100, grad_reduce_bytes=2, overlap_param_gather=True)
    return {
        "llama3-70b": (Workload(_model("llama-70b"), 8192, 256, 1, 4, 8, 5, 1, 2, tp_comm_overlap=True, **recipe),
                       1664, 735),
        "llama3.1-405b": (Workload(_model("llama-70b", *LLAMA_405B), 8192, 1536, 1, 8, 8, 8, 2, 8,
                                   split=PipelineSplit(True, True), tp_comm_overlap=True, **recipe), 328, 827),
        "llama3-8b": (Workload(_model("llama-8b"), 8192, 128, 1, 1, 1, None, 1, 8, recompute="full",
                               recompute_layers=5, **recipe), 14451, 744),
    }


@pytest.mark.parametrize("name", ["llama3-70b", "llama3.1-405b", "llama3-8b"])
def test_prediction_within_15_percent_of_published(name: str) -> None:
    workload, tokens, tflops = published()[name]
    predicted = step_time(workload)
    assert predicted.tflops_per_gpu == pytest.approx(tflops, rel=0.15)
    tokens_per_gpu = workload.global_batch * workload.seq_length / predicted.total / workload.world
    assert tokens_per_gpu == pytest.approx(tokens, rel=0.15)
    assert predicted.total == pytest.approx(sum(predicted.as_dict()[k] for k in (
        "compute", "recompute", "tp_comm", "cp_comm", "pp_comm", "bubble", "dp_comm", "optimizer")), rel=1e-12)


def test_negative_control_peak_gemms_miss_the_published_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """GEMMs at datasheet peak (no achievable-efficiency calibration) overshoot every case by far more than 15%."""
    monkeypatch.setattr(calibration, "GEMM_EFFICIENCY", {p: 1.0 for p in calibration.GEMM_EFFICIENCY})
    for workload, _, tflops in published().values():
        assert step_time(workload).tflops_per_gpu > 1.25 * tflops


def test_negative_control_exposed_tp_communication_misses_405b() -> None:
    """Without the recipe's TP overlap the 405B prediction falls outside the band: TP traffic matters."""
    workload, _, tflops = published()["llama3.1-405b"]
    exposed = step_time(dataclasses.replace(workload, tp_comm_overlap=False))
    assert exposed.tflops_per_gpu < 0.85 * tflops


def _base(**changes) -> Workload:
    workload = Workload(_model("llama-70b"), 8192, 256, 1, 4, 4, None, 1, 4, "fp8", H100)
    return dataclasses.replace(workload, **changes)


@pytest.mark.parametrize("virtual", [None, 2, 5])
def test_more_stages_never_shrink_the_bubble(virtual: int | None) -> None:
    microbatches = 32
    bubbles = []
    for pipeline in (2, 4, 8, 16):
        data = 64 // (4 * pipeline)
        workload = _base(pipeline=pipeline, data=data, virtual=virtual, global_batch=microbatches * data)
        assert workload.microbatches == microbatches
        predicted = step_time(workload)
        assert predicted.bubble_fraction == pytest.approx((pipeline - 1) / (microbatches * (virtual or 1)))
        bubbles.append(predicted.bubble_fraction)
    assert bubbles == sorted(bubbles) and bubbles[0] < bubbles[-1]


@pytest.mark.parametrize("field", ["tp_comm_overlap", "overlap_grad_reduce", "overlap_param_gather"])
@pytest.mark.parametrize("tensor, pipeline, context", [(8, 1, 1), (4, 4, 2), (2, 2, 1), (1, 1, 4)])
def test_overlap_never_increases_predicted_time(field: str, tensor: int, pipeline: int, context: int) -> None:
    data = 64 // (tensor * pipeline * context)
    workload = _base(tensor=tensor, pipeline=pipeline, context=context, data=data, global_batch=8 * data)
    off = step_time(dataclasses.replace(workload, **{field: False}))
    on = step_time(dataclasses.replace(workload, **{field: True}))
    assert on.total <= off.total


def test_overlap_helps_where_there_is_traffic() -> None:
    """Negative control for the test above: with TP8 the overlap saves a visible share, so `<=` is not vacuous."""
    workload = _base(tensor=8, pipeline=1, data=8, global_batch=64)
    off = step_time(dataclasses.replace(workload, tp_comm_overlap=False))
    on = step_time(dataclasses.replace(workload, tp_comm_overlap=True))
    assert on.total < 0.95 * off.total


def test_tp8_across_two_nodes_is_slower_than_within_one() -> None:
    inside = _base(tensor=8, pipeline=1, data=8, global_batch=64)
    across = dataclasses.replace(inside, gpu=dataclasses.replace(H100, gpus_per_node=4))
    inside_time, across_time = step_time(inside), step_time(across)
    assert across_time.tp_comm > 3 * inside_time.tp_comm
    assert across_time.total > 1.2 * inside_time.total


def test_measured_mfu_overrides_the_kernels() -> None:
    """With --mfu the layers run at that MFU (the output layer and optimizer stay modelled): a bubble-free,
    communication-free layout lands just under it, and halving the MFU doubles the layers' compute."""
    workload = Workload(_model("llama-8b"), 8192, 8, 1, 1, 1, None, 1, 1, "bf16", H100, mfu=0.5)
    half = step_time(workload)
    quarter = step_time(dataclasses.replace(workload, mfu=0.25))
    assert 0.45 < half.mfu < 0.5
    assert quarter.mfu == pytest.approx(half.mfu / 2, rel=0.05)


def test_small_gemms_run_below_peak_by_wave_quantisation() -> None:
    """Tiles of 128 x 256 over H100's 132 SMs (closed form): 12 x 11 = 132 tiles fill one wave; 7 x 19 = 133
    tiles of the same size need two, so twice the time for 1/132 more work; 2 x 2 = 4 tiles take as long as
    132 (128 SMs idle). All three shapes are compute-bound, so the HBM floor does not interfere."""
    from megatron_llm.planning.perf_model import gemm_seconds

    k = 8192
    tile = 132 * 2 * 128 * 256 * k / (H100.peak_flops("fp8") * calibration.GEMM_EFFICIENCY["fp8"])  # one wave
    full = gemm_seconds(128 * 12, k, 256 * 11, "fp8", H100)
    spill = gemm_seconds(128 * 7, k, 256 * 19, "fp8", H100)
    tiny = gemm_seconds(128 * 2, k, 256 * 2, "fp8", H100)
    assert full == pytest.approx(tile, rel=1e-12)
    assert spill == pytest.approx(2 * tile, rel=1e-12)
    assert tiny == pytest.approx(tile, rel=1e-12)
    memory_bound = gemm_seconds(128, k, 256 * 132, "fp8", H100)  # one row of tiles streams a 277 MB weight
    assert memory_bound > 1.5 * tile
