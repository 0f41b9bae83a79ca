"""The memory estimator's arithmetic: DDP buffer layout, bytes per parameter, activations, warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.errors import UsageError
from megatron_llm.model.params import ParamTensor, count_parameters
from megatron_llm.planning.activations import ActivationShape, in_flight, layer_bytes
from megatron_llm.planning.buffers import buffer_layout
from megatron_llm.planning.gpus import GIB, lookup_gpu
from megatron_llm.planning.memory import estimate_memory, rank_memory, static_memory, warn_if_not_fitting

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def _config(name: str, *overrides: str):
    return load_config(CONFIGS / f"{name}.yaml", list(overrides))


def test_buffer_without_distributed_optimizer_is_unpadded() -> None:
    tensors = [ParamTensor(f"t{i}", n) for i, n in enumerate((100, 7, 4096))]
    layout = buffer_layout(tensors, data_parallel=4, distributed_optimizer=False, bucket_size=None)
    assert layout.numel == 4203 and len(layout.buckets) == 1
    assert layout.buckets[0].param_ranges == ((0, 4096), (4096, 4103), (4103, 4203))


def test_distributed_optimizer_pads_params_and_buckets() -> None:
    tensors = [ParamTensor(f"t{i}", n) for i, n in enumerate((100, 7, 4096))]
    layout = buffer_layout(tensors, data_parallel=3, distributed_optimizer=True, bucket_size=None)
    # reverse order: 4096 at 0, 7 at 4096, 100 at 4160 (64-aligned); end 4260 padded to lcm(3, 128)=384
    assert layout.buckets[0].param_ranges == ((0, 4096), (4096, 4103), (4160, 4260))
    assert layout.numel == 4608
    shards = [layout.shard_numel(3, rank) for rank in range(3)]
    assert sum(elements for elements, _ in shards) == 4203
    assert shards[0] == (1536, 1)


def test_buckets_split_at_bucket_size_and_shared_embedding_gets_its_own() -> None:
    tensors = [ParamTensor("emb", 1000, shared_embedding=True)] + [ParamTensor(f"w{i}", 640) for i in range(4)]
    layout = buffer_layout(tensors, data_parallel=2, distributed_optimizer=True, bucket_size=1200)
    assert [len(b.param_ranges) for b in layout.buckets] == [2, 2, 1]
    assert all((b.end - b.start) % 128 == 0 for b in layout.buckets)


@pytest.mark.parametrize(
    "dtype, distopt, dp, expected",
    [("bf16", False, 64, 18), ("bf16", True, 64, 6 + 12 / 64), ("fp32", False, 64, 16), ("fp32", True, 8, 8 + 1)],
)
def test_bytes_per_parameter(dtype: str, distopt: bool, dp: int, expected: float) -> None:
    config = _config(
        "llama-7b", f"precision.dtype={dtype}", "parallel.tensor=1", f"parallel.distributed_optimizer={distopt}"
    )
    static = static_memory(config, dp, gpu=lookup_gpu("h100"))
    per_param = (static.weights + static.gradients + static.optimizer) / count_parameters(config.model).total
    assert per_param == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("fp8_param_gather", [False, True])
def test_static_memory_per_rank_with_pipeline_and_tensor_parallel(fp8_param_gather: bool) -> None:
    config = _config("llama-70b", "parallel.tensor=8", "parallel.pipeline=4",  # x5 virtual stages, distopt, FP8
                     f"precision.fp8_param_gather={fp8_param_gather}")
    first = static_memory(config, 128, pipeline_rank=0, gpu=lookup_gpu("h100"))
    middle = static_memory(config, 128, pipeline_rank=1, gpu=lookup_gpu("h100"))
    layer = count_parameters(config.model).per_layer
    embedding_shard = 129_024 // 8 * 8192
    assert first.weights - middle.weights == pytest.approx(2 * embedding_shard, rel=1e-4)
    if not fp8_param_gather:
        assert middle.weights == pytest.approx(2 * 20 * layer / 8, rel=1e-3)
        return
    # FP8 primary weights: the four linear layers at 1 byte per element (sharded over TP), the two norms bf16
    # (replicated): about half the bytes. Gradients and the optimizer's state (fp32 main weights) do not change.
    h = config.model.hidden_size
    assert middle.weights == pytest.approx(20 * ((layer - 2 * h) / 8 + 2 * 2 * h), rel=1e-3)
    sixteen_bit = static_memory(_config("llama-70b", "parallel.tensor=8", "parallel.pipeline=4",
                                        "precision.fp8_param_gather=false"), 128, pipeline_rank=1,
                                gpu=lookup_gpu("h100"))
    assert (middle.gradients, middle.optimizer) == pytest.approx((sixteen_bit.gradients, sixteen_bit.optimizer),
                                                                 rel=1e-4)


def test_activation_schedules() -> None:
    assert [in_flight(16, 4, None, r) for r in range(4)] == [4, 3, 2, 1]
    assert in_flight(2, 4, None, 0) == 2
    assert in_flight(16, 4, 2, 0) == 2 * 3 + 4 + 1
    model = _config("llama-7b").model
    shape = ActivationShape(seq_length=4096, micro_batch=1, tensor_parallel=2)
    sp = ActivationShape(seq_length=4096, micro_batch=1, tensor_parallel=2, sequence_parallel=True)
    assert layer_bytes(model, sp) < layer_bytes(model, shape)
    assert layer_bytes(model, shape, "full") == 2 * 4096 * 4096
    unfused = ActivationShape(seq_length=4096, micro_batch=1, flash_attention=False)
    assert layer_bytes(model, unfused) - layer_bytes(model, unfused, "selective") == 2 * 32 * 4096 * 4096


def test_recompute_and_micro_batch_change_activations_only() -> None:
    base = estimate_memory(_config("llama-7b"), 64, "h100")
    full = estimate_memory(_config("llama-7b", "model.recompute=full"), 64, "h100")
    assert full.static == base.static and full.activations < base.activations / 5
    bigger = estimate_memory(_config("llama-7b", "schedule.micro_batch_size=2"), 64, "h100")
    assert bigger.activations == pytest.approx(2 * base.activations, rel=0.01)


def test_most_loaded_stage_is_reported() -> None:
    config = _config("llama-70b")
    estimate = estimate_memory(config, 128, "h100")
    ranks = [rank_memory(config, 128, r, gpu=lookup_gpu("h100")).total for r in range(4)]
    assert estimate.total == max(ranks)


def test_warning_when_the_layout_does_not_fit() -> None:
    config = _config("llama-70b", "parallel.pipeline=1", "parallel.virtual_pipeline=null")
    message = warn_if_not_fitting(config, 64, "h100")
    assert message is not None and "GiB" in message and "optimizer" in message
    assert warn_if_not_fitting(_config("llama-70b"), 128, "h100") is None
    assert warn_if_not_fitting(_config("llama-70b"), 128, 80 * GIB) is None
    assert warn_if_not_fitting(_config("llama-70b"), 128, 16 * GIB) is not None
    assert warn_if_not_fitting(_config("llama-70b"), 128, None) is None


def test_invalid_layout_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="parallel.tensor"):
        estimate_memory(_config("llama-7b", "parallel.tensor=3"), 63, "h100")
    with pytest.raises(UsageError, match="ffn_hidden_size"):
        estimate_memory(_config("tiny", "model.ffn_hidden_size=175", "parallel.tensor=2"), 2)


def test_gpu_table() -> None:
    assert lookup_gpu("H100_SXM").name == "h100"
    assert lookup_gpu("a100-80gb").memory_bytes == 80 * GIB
    assert lookup_gpu("mi300x", memory_gib=100).memory_bytes == 100 * GIB
    assert lookup_gpu("h100", peak_tflops=500).peak_flops("bf16") == 500e12
    with pytest.raises(UsageError, match="unknown GPU"):
        lookup_gpu("rtx4090")
    with pytest.raises(UsageError, match="fp8"):
        lookup_gpu("a100").peak_flops("fp8")
    with pytest.raises(UsageError, match="precision"):
        lookup_gpu("h100").peak_flops("int4")
