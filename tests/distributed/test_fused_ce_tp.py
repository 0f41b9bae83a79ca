"""The fused linear cross-entropy at TP=2 (two gloo processes): exact against megatron-core's
vocab_parallel_cross_entropy on each rank's logits shard (Triton kernels under the interpreter, and the torch
fallback), and the tiny GPTModel with model.fused_linear_cross_entropy computing the plain model's per-token
losses and parameter gradients. Tolerance 1e-6 relative to the largest value compared: fp32 sums taken in
another order (chunks of 256 columns, statistics combined across ranks after the chunks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.conftest import torchrun

WORKER = Path(__file__).with_name("fused_ce_worker.py")
REL = 1e-6


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("fused-ce")
    torchrun(2, str(WORKER), str(out), timeout=600, env={"TRITON_INTERPRET": "1"})
    return [json.loads((out / f"{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_kernel_equals_megatron_core_at_tp2(records: list[dict], backend: str) -> None:
    for record in records:
        assert record["masked_tokens"] > 3
        for diff, scale in zip(record[f"kernel/{backend}"], record[f"kernel/{backend}/scale"]):
            assert diff <= REL * max(scale, 1.0), record
        # negative control: without the all-reduces each rank's loss is that of its own vocabulary half
        assert record["no_group"] > 0.1


def test_model_with_fused_loss_equals_plain_model_at_tp2_sequence_parallel(records: list[dict]) -> None:
    for record in records:
        model = record["model"]
        assert model["classes"] == ["GPTModel", "FusedLossGPTModel"]
        assert model["loss"] <= REL * model["loss_scale"]
        assert len(model["grads"]) > 10
        for name, (diff, scale) in model["grads"].items():
            assert scale > 0, name
            assert diff <= REL * max(scale, 1.0), (name, diff, scale)


def test_z_loss_is_exact_under_vocabulary_parallelism(records: list[dict]) -> None:
    """The plain path's z-loss (and its logits gradient) and the fused kernel's log-sum-exp at TP=2 equal
    float64 computed from the full logits; from one rank's shard alone the z-loss is far off."""
    for record in records:
        z, z_scale, grad, grad_scale, lse, lse_scale = record["z"]
        assert z <= REL * z_scale and grad <= REL * grad_scale and lse <= REL * lse_scale, record["z"]
        assert record["z/no_group"] > 1000 * REL * z_scale


def test_plain_z_loss_model_equals_fused_z_loss_model_at_tp2(records: list[dict]) -> None:
    for record in records:
        model = record["model_z"]
        assert model["classes"] == ["ZLossGPTModel", "FusedLossGPTModel"]
        assert model["loss"] <= REL * max(model["loss_scale"], 1.0)
        for name, (diff, scale) in model["grads"].items():
            assert diff <= REL * max(scale, 1.0), name
        # negative control: the z term is not lost in the comparison (it is far larger than the tolerance)
        assert record["model_z"]["loss_scale"] > record["model"]["loss_scale"] + 1000 * REL
