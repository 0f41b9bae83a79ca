"""The fused linear cross-entropy (megatron_llm.kernels) at TP=1 against megatron-core's vocab-parallel
cross-entropy on the full logits, against Liger-Kernel's fused linear cross-entropy, and against the z-loss
written out in float64. The Triton kernels run on CPU tensors under Triton's interpreter; the torch fallback
(what CPU training uses) runs the same chunking.

Shapes are small and chosen so that every edge is hit: 700 local vocabulary rows (not a multiple of the
128-column block) cut into chunks of 256, 256 and 188 columns, the last 50 rows padding, masked tokens.
Tolerance: 1e-6 relative (+1e-6 absolute for values near 0), fp32 rounding of sums over 700 terms taken in
another order.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
from megatron_llm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

assert os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py before Triton is first imported

TOKENS, HIDDEN, ROWS, REAL = 24, 32, 700, 650
CHUNK = TOKENS * 256  # chunks of 256 columns
PADDING_LOGIT = -1.0e4  # what the plain model path puts in padding columns (megatron_llm.model.vocab)
TOL = dict(rtol=1e-6, atol=1e-6)


def _data(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "hidden": torch.randn(TOKENS, HIDDEN, generator=g),
        "weight": 0.3 * torch.randn(ROWS, HIDDEN, generator=g),
        "target": torch.randint(0, REAL, (TOKENS,), generator=g),
        "mask": (torch.rand(TOKENS, generator=g) > 0.3).float(),
        "grad": torch.rand(TOKENS, generator=g) + 0.5,  # per-token upstream gradient, as a loss mask x scale
    }


def _grads(loss: torch.Tensor, d: dict, hidden, weight) -> tuple:
    gh, gw = torch.autograd.grad((loss * d["grad"]).sum(), [hidden, weight])
    return loss.detach(), gh, gw


def _ours(d: dict, backend: str, **kwargs) -> tuple:
    hidden = d["hidden"].clone().requires_grad_()
    weight = d["weight"].clone().requires_grad_()
    options = dict(loss_mask=d["mask"], valid_vocab=REAL, chunk_elements=CHUNK, backend=backend) | kwargs
    return _grads(fused_linear_cross_entropy(hidden, weight, d["target"], **options), d, hidden, weight)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def megatron_ce():
    """megatron-core's vocab_parallel_cross_entropy in a one-process gloo group (TP=1)."""
    from megatron.core import tensor_parallel

    from megatron_llm.config.schema import ParallelConfig
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed

    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    for key in ("RANK", "WORLD_SIZE"):
        os.environ.pop(key, None)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    init_distributed(ParallelConfig())
    yield tensor_parallel.vocab_parallel_cross_entropy
    destroy_distributed()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _reference(d: dict, megatron_ce) -> tuple:
    hidden = d["hidden"].clone().requires_grad_()
    weight = d["weight"].clone().requires_grad_()
    logits = hidden @ weight.t()
    logits = logits.masked_fill(torch.arange(ROWS) >= REAL, PADDING_LOGIT)
    loss = megatron_ce(logits[:, None, :], d["target"][:, None])[:, 0] * d["mask"]
    return _grads(loss, d, hidden, weight)


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_loss_and_gradients_equal_megatron_core_tp1(megatron_ce, backend: str) -> None:
    d = _data()
    expected = _reference(d, megatron_ce)
    for got, want in zip(_ours(d, backend), expected):
        torch.testing.assert_close(got, want, **TOL)
    assert int((d["mask"] == 0).sum()) > 3 and bool((expected[0][d["mask"] == 0] == 0).all())
    # Negative controls: one real column taken for padding, or targets read one chunk off, are far outside.
    assert (_ours(d, backend, valid_vocab=REAL - 1)[0] - expected[0]).abs().max() > 1e-3
    assert (_ours(d, backend, vocab_start=256)[0] - expected[0]).abs().max() > 1e-1


def test_chunk_width_does_not_change_the_result(megatron_ce) -> None:
    d = _data(1)
    expected = _reference(d, megatron_ce)
    for chunk in (TOKENS * 128, TOKENS * 384, 1 << 26):  # 6 chunks; 2 chunks; one chunk
        for got, want in zip(_ours(d, "torch", chunk_elements=chunk), expected):
            torch.testing.assert_close(got, want, **TOL)


def test_z_loss_and_ignore_index_equal_float64_closed_form() -> None:
    """loss = lse - logit[target] + z lse^2 over the real vocabulary; ignored targets (-100) give 0."""
    d, z = _data(2), 1e-3
    target = torch.where(d["mask"] > 0, d["target"], torch.full_like(d["target"], -100))
    hidden = d["hidden"].double().requires_grad_()
    weight = d["weight"].double().requires_grad_()
    logits = (hidden @ weight.t())[:, :REAL]
    lse = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(1, target.clamp(min=0)[:, None])[:, 0]
    expected = _grads((lse - picked + z * lse * lse) * (target >= 0), d, hidden, weight)
    for backend in ("triton", "torch"):
        hidden32 = d["hidden"].clone().requires_grad_()
        weight32 = d["weight"].clone().requires_grad_()
        loss = fused_linear_cross_entropy(hidden32, weight32, target, z_loss=z, valid_vocab=REAL,
                                          chunk_elements=CHUNK, backend=backend)
        got = _grads(loss, d, hidden32, weight32)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a.double(), b, **TOL)
        without_z = fused_linear_cross_entropy(d["hidden"], d["weight"], target, valid_vocab=REAL, backend=backend)
        assert (without_z.double() - expected[0]).abs().max() > 1e-2  # negative control: z-loss left out


def test_equals_liger_kernel_fused_linear_cross_entropy() -> None:
    """Liger-Kernel (its own Triton kernels, also interpreted) on sum reduction, ignore_index and z-loss."""
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

    d, z = _data(3), 1e-4
    weight_real = d["weight"][:REAL].clone()  # Liger has no vocabulary padding
    target = torch.where(d["mask"] > 0, d["target"], torch.full_like(d["target"], -100))
    hidden = d["hidden"].clone().requires_grad_()
    weight = weight_real.clone().requires_grad_()
    liger = LigerFusedLinearCrossEntropyFunction.apply(hidden, weight, target, None, None, -100, z, 0.0, "sum")[0]
    liger_grads = torch.autograd.grad(liger, [hidden, weight])
    ours_hidden = d["hidden"].clone().requires_grad_()
    ours_weight = weight_real.clone().requires_grad_()
    ours = fused_linear_cross_entropy(ours_hidden, ours_weight, target, z_loss=z, chunk_elements=CHUNK,
                                      backend="triton").sum()
    ours_grads = torch.autograd.grad(ours, [ours_hidden, ours_weight])
    torch.testing.assert_close(ours.detach(), liger.detach(), **TOL)
    for a, b in zip(ours_grads, liger_grads):
        torch.testing.assert_close(a, b, **TOL)
    unmasked = fused_linear_cross_entropy(d["hidden"], weight_real, d["target"], z_loss=z).sum()
    assert abs(float(unmasked) - float(liger)) > 1.0  # negative control: the ignored tokens counted
