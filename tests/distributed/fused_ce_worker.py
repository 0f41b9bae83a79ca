"""Worker for test_fused_ce_tp: the fused linear cross-entropy at TP=2 (gloo), run under torchrun.

argv: output directory. Every rank writes `<out>/<rank>.json` with the largest differences it found:
- "kernel/<backend>": loss, hidden-gradient and weight-shard-gradient differences against megatron-core's
  vocab_parallel_cross_entropy on this rank's full logits shard (padding filled as the plain model does);
- "no_group": the loss difference when the statistics are not reduced over the TP group (negative control);
- "model": loss and every parameter gradient of the tiny GPTModel (TP=2, sequence parallel, padded
  vocabulary) built with model.fused_linear_cross_entropy true against the same model built with false;
  "model_z": the same with optim.z_loss on (the plain path's z-loss against the fused kernel's);
- "z": the plain path's vocabulary-parallel z-loss and its logits gradient, and the fused kernel's
  log-sum-exp, against float64 computed from the full (unsplit) logits; "z/no_group": the z-loss from this
  rank's shard alone (negative control).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

TOKENS, HIDDEN, ROWS_PER_RANK, REAL = 24, 32, 384, 700
CHUNK = TOKENS * 256


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def kernel_checks(rank: int) -> dict:
    from megatron.core import parallel_state, tensor_parallel
    from megatron_llm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

    group = parallel_state.get_tensor_model_parallel_group()
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(TOKENS, HIDDEN, generator=g)
    weight = (0.3 * torch.randn(2 * ROWS_PER_RANK, HIDDEN, generator=g))[rank * ROWS_PER_RANK:][:ROWS_PER_RANK]
    target = torch.randint(0, REAL, (TOKENS,), generator=g)
    mask = (torch.rand(TOKENS, generator=g) > 0.3).float()
    upstream = torch.rand(TOKENS, generator=g) + 0.5
    columns = torch.arange(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)

    def run(fn) -> tuple:
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        loss = fn(h, w)
        gh, gw = torch.autograd.grad((loss * upstream).sum(), [h, w])
        return loss.detach(), gh, gw

    def reference(h, w):
        logits = (h @ w.t()).masked_fill(columns >= REAL, -1.0e4)
        return tensor_parallel.vocab_parallel_cross_entropy(logits[:, None], target[:, None])[:, 0] * mask

    expected = run(reference)
    found = {}
    for backend in ("triton", "torch"):
        got = run(lambda h, w, backend=backend: fused_linear_cross_entropy(
            h, w, target, loss_mask=mask, vocab_start=rank * ROWS_PER_RANK, valid_vocab=REAL, group=group,
            chunk_elements=CHUNK, backend=backend))
        found[f"kernel/{backend}"] = [_max_diff(a, b) for a, b in zip(got, expected)]
        found[f"kernel/{backend}/scale"] = [float(t.abs().max()) for t in expected]
    alone = fused_linear_cross_entropy(hidden, weight, target, loss_mask=mask, vocab_start=rank * ROWS_PER_RANK,
                                       valid_vocab=REAL, chunk_elements=CHUNK, backend="torch")
    found["no_group"] = _max_diff(alone, expected[0])
    found["masked_tokens"] = int((mask == 0).sum())
    return found


def z_checks(rank: int) -> dict:
    from megatron.core import parallel_state
    from megatron_llm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy

    from megatron_llm.model.z_loss import vocab_parallel_logsumexp

    group = parallel_state.get_tensor_model_parallel_group()
    g = torch.Generator().manual_seed(1)
    full = 3.0 * torch.randn(TOKENS, 2 * ROWS_PER_RANK, generator=g, dtype=torch.float64)
    full[:, REAL:] = -1.0e4  # the vocabulary padding, as mask_padding_logits leaves it
    upstream = torch.rand(TOKENS, generator=g, dtype=torch.float64) + 0.5
    columns = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
    coef = 0.01
    full.requires_grad_()
    z_ref = coef * torch.logsumexp(full, dim=-1).square()
    (grad_ref,) = torch.autograd.grad((z_ref * upstream).sum(), [full])
    local = full.detach()[:, columns].float().requires_grad_()
    z = coef * vocab_parallel_logsumexp(local, group).square()
    (grad,) = torch.autograd.grad((z * upstream.float()).sum(), [local])
    alone = coef * vocab_parallel_logsumexp(local.detach(), None).square()

    hidden = torch.randn(TOKENS, HIDDEN, generator=g)
    weight = 0.3 * torch.randn(2 * ROWS_PER_RANK, HIDDEN, generator=g)
    logits = (hidden.double() @ weight.double().t())[:, :REAL]
    _, lse = fused_linear_cross_entropy(hidden, weight[columns], torch.zeros(TOKENS, dtype=torch.long),
                                        vocab_start=rank * ROWS_PER_RANK, valid_vocab=REAL, group=group,
                                        chunk_elements=CHUNK, backend="torch", return_lse=True)
    lse_ref = torch.logsumexp(logits, dim=-1)
    return {"z": [_max_diff(z, z_ref), float(z_ref.abs().max()), _max_diff(grad, grad_ref[:, columns]),
                  float(grad_ref.abs().max()), _max_diff(lse, lse_ref), float(lse_ref.abs().max())],
            "z/no_group": _max_diff(alone, z_ref)}


def model_checks(z_loss: float = 0.0) -> dict:
    from megatron_llm.config.loader import load_config
    from megatron_llm.model.builder import build_model_chunks
    from megatron_llm.runtime.distributed import set_seeds
    from megatron_llm.runtime.hardware import detect_platform

    results = {}
    for fused in (False, True):
        config = load_config(Path(__file__).parents[2] / "examples/configs/tiny.yaml", [
            "parallel.tensor=2", "parallel.sequence_parallel=true", f"model.fused_linear_cross_entropy={fused}",
            f"optim.z_loss={z_loss}"])
        set_seeds(config.schedule.seed)
        model = build_model_chunks(config, 500, detect_platform())[0]  # 500 real rows padded to 512
        g = torch.Generator().manual_seed(5)
        tokens = torch.randint(0, 500, (2, 32), generator=g)
        labels = torch.randint(0, 500, (2, 32), generator=g)
        upstream = torch.rand(2, 32, generator=g)
        loss = model(tokens, torch.arange(32)[None].expand(2, 32), None, labels=labels)
        (loss * upstream).sum().backward()
        results[fused] = (type(model).__name__, loss.detach(),
                          {name: p.grad.clone() for name, p in model.named_parameters()})
    (plain_name, plain_loss, plain_grads), (fused_name, fused_loss, fused_grads) = results[False], results[True]
    return {
        "classes": [plain_name, fused_name],
        "loss": _max_diff(fused_loss, plain_loss),
        "loss_scale": float(plain_loss.abs().max()),
        "grads": {name: [_max_diff(fused_grads[name], grad), float(grad.abs().max())]
                  for name, grad in plain_grads.items()},
    }


def main() -> None:
    from megatron.core import parallel_state

    from megatron_llm.config.schema import ParallelConfig
    from megatron_llm.runtime.distributed import destroy_distributed, init_distributed

    out = Path(sys.argv[1])
    init_distributed(ParallelConfig(tensor=2))
    rank = parallel_state.get_tensor_model_parallel_rank()
    record = kernel_checks(rank)
    record["model"] = model_checks()
    record.update(z_checks(rank))
    record["model_z"] = model_checks(z_loss=0.01)
    (out / f"{rank}.json").write_text(json.dumps(record))
    destroy_distributed()


if __name__ == "__main__":
    main()
