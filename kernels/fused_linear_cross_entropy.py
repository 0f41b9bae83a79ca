"""Vocabulary-parallel fused linear cross-entropy: the output layer and the loss without the full logits.

For a 128k vocabulary the logits of one micro-batch ([tokens, vocab / TP], then an FP32 copy for the softmax)
take gigabytes. Here the local vocabulary shard is walked in chunks of columns: each chunk's logits
(`hidden @ W_chunk^T`, [tokens, chunk]) are made, reduced to per-token running statistics (max, sum of exp,
target logit) and dropped. Across tensor-parallel ranks the statistics are combined like one more chunk: the
max by an all-reduce MAX, the rescaled sum by an all-reduce SUM, and the target logit by an all-reduce SUM to
which only the rank owning the target contributes. The backward pass recomputes each chunk's logits, turns
them in place into the logit gradient and immediately folds it into the two gradients:

    grad W[chunk] = G_chunk^T @ hidden     (each chunk's rows once: no accumulator for W)
    grad hidden  += G_chunk @ W[chunk]      (an FP32 accumulator of [tokens, hidden])

so the peak is one chunk of logits instead of all of them, at the price of recomputing the output matmul once.
The gradient of `hidden` is this rank's partial sum: the caller's tensor-parallel region (megatron-core's
copy-to / gather-from-sequence-parallel mappings) reduces it, as for any column-parallel linear layer.

Loss per token: `lse - logit[target] + z_loss * lse^2` (z-loss as in PaLM), 0 for masked tokens. Columns at
or past `valid_vocab` (the vocabulary padding) carry no probability and receive no gradient.

Two implementations of the per-chunk work with the same chunking: Triton kernels (GPU, or CPU tensors under
Triton's interpreter, `TRITON_INTERPRET=1`) and torch operations (CPU training with the option on). The
matrix products are torch's (cuBLAS on GPU) in both.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
import torch.distributed as dist
from megatron_llm.kernels.chunking import CHUNK_MULTIPLE, DEFAULT_CHUNK_ELEMENTS, chunk_ranges

_START_MAX = -1.0e30  # finite start for the running max, so that an all-padding chunk adds exactly nothing


def triton_usable(device: torch.device) -> bool:
    """Triton can run these kernels on tensors of `device`: CUDA, or any tensor under the interpreter."""
    if importlib.util.find_spec("triton") is None:
        return False
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _triton_kernels():
    """Compiled (or interpreted) kernels, made on first use so TRITON_INTERPRET is read when it is set."""
    import triton
    import triton.language as tl

    @triton.jit
    def chunk_statistics(logits_ptr, stride, target_ptr, max_ptr, sum_ptr, tgt_ptr, n_cols, n_valid,
                         col_offset, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)
        row_ptr = logits_ptr + row.to(tl.int64) * stride
        local_target = tl.load(target_ptr + row) - col_offset
        running_max = tl.load(max_ptr + row)
        running_sum = tl.load(sum_ptr + row)
        target_logit = tl.load(tgt_ptr + row)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_ptr + cols, mask=cols < n_valid, other=float("-inf")).to(tl.float32)
            new_max = tl.maximum(running_max, tl.max(x, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
            target_logit += tl.sum(tl.where(cols == local_target, x, 0.0), axis=0)
            running_max = new_max
        tl.store(max_ptr + row, running_max)
        tl.store(sum_ptr + row, running_sum)
        tl.store(tgt_ptr + row, target_logit)

    @triton.jit
    def chunk_logit_gradient(logits_ptr, stride, target_ptr, lse_ptr, grad_ptr, n_cols, n_valid, col_offset,
                             two_z, BLOCK_V: tl.constexpr):
        row = tl.program_id(0)
        row_ptr = logits_ptr + row.to(tl.int64) * stride
        local_target = tl.load(target_ptr + row) - col_offset
        lse = tl.load(lse_ptr + row)
        grad = tl.load(grad_ptr + row)
        scale = grad * (1.0 + two_z * lse)
        for start in range(0, n_cols, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            inside = cols < n_cols
            x = tl.load(row_ptr + cols, mask=inside, other=0.0).to(tl.float32)
            g = tl.where(cols < n_valid, tl.exp(x - lse) * scale, 0.0) - tl.where(cols == local_target, grad, 0.0)
            tl.store(row_ptr + cols, g.to(logits_ptr.dtype.element_ty), mask=inside)

    return chunk_statistics, chunk_logit_gradient


def _statistics_torch(logits, target, running, n_valid, col_offset):
    running_max, running_sum, target_logit = running
    x = logits.float()
    if n_valid < x.shape[1]:
        x = x.clone()
        x[:, n_valid:] = float("-inf")
    new_max = torch.maximum(running_max, x.max(dim=1).values)
    chunk_sum = torch.exp(x - new_max[:, None]).sum(dim=1)
    running_sum.mul_(torch.exp(running_max - new_max)).add_(chunk_sum)
    running_max.copy_(new_max)
    local = target - col_offset
    owned = (local >= 0) & (local < logits.shape[1])
    picked = x.gather(1, local.clamp(0, logits.shape[1] - 1)[:, None])[:, 0]
    target_logit.add_(torch.where(owned, picked, torch.zeros_like(picked)))


def _logit_gradient_torch(logits, target, lse, grad, n_valid, col_offset, two_z):
    x = logits.float()
    g = torch.exp(x - lse[:, None]) * (grad * (1.0 + two_z * lse))[:, None]
    if n_valid < x.shape[1]:
        g[:, n_valid:] = 0.0
    local = target - col_offset
    owned = (local >= 0) & (local < logits.shape[1])
    rows = torch.nonzero(owned)[:, 0]
    g[rows, local[rows]] -= grad[rows]
    logits.copy_(g)


def _block(width: int) -> int:
    """Columns a Triton program handles per loop iteration."""
    return 1024 if width >= 1024 else CHUNK_MULTIPLE


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, target, keep, vocab_start, valid_vocab, z_loss, chunk_elements, use_triton,
                group):
        tokens = hidden.shape[0]
        running = (
            torch.full((tokens,), _START_MAX, dtype=torch.float32, device=hidden.device),
            torch.zeros(tokens, dtype=torch.float32, device=hidden.device),
            torch.zeros(tokens, dtype=torch.float32, device=hidden.device),
        )
        chunks = chunk_ranges(weight.shape[0], tokens, chunk_elements)
        for start, end in chunks:
            logits = hidden @ weight[start:end].t()
            n_valid = max(0, min(end - start, valid_vocab - vocab_start - start))
            if use_triton:
                kernel = _triton_kernels()[0]
                kernel[(tokens,)](logits, logits.stride(0), target, *running, end - start, n_valid,
                                  vocab_start + start, BLOCK_V=_block(end - start))
            else:
                _statistics_torch(logits, target, running, n_valid, vocab_start + start)
            del logits
        local_max, local_sum, target_logit = running
        if group is not None and dist.get_world_size(group) > 1:
            global_max = local_max.clone()
            dist.all_reduce(global_max, op=dist.ReduceOp.MAX, group=group)
            local_sum.mul_(torch.exp(local_max - global_max))
            dist.all_reduce(local_sum, group=group)
            dist.all_reduce(target_logit, group=group)
            local_max = global_max
        lse = local_max + torch.log(local_sum)
        loss = (lse - target_logit + z_loss * lse * lse) * keep
        ctx.save_for_backward(hidden, weight, target, keep, lse)
        ctx.settings = (vocab_start, valid_vocab, z_loss, chunks, use_triton)
        lse_out = lse.detach().clone()
        ctx.mark_non_differentiable(lse_out)
        return loss, lse_out

    @staticmethod
    def backward(ctx, grad_loss, _grad_lse):
        hidden, weight, target, keep, lse = ctx.saved_tensors
        vocab_start, valid_vocab, z_loss, chunks, use_triton = ctx.settings
        grad = (grad_loss.float() * keep).contiguous()
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
        grad_weight = torch.empty_like(weight)
        for start, end in chunks:
            w = weight[start:end]
            logits = hidden @ w.t()
            n_valid = max(0, min(end - start, valid_vocab - vocab_start - start))
            if use_triton:
                kernel = _triton_kernels()[1]
                kernel[(hidden.shape[0],)](logits, logits.stride(0), target, lse, grad, end - start, n_valid,
                                           vocab_start + start, 2.0 * z_loss, BLOCK_V=_block(end - start))
            else:
                _logit_gradient_torch(logits, target, lse, grad, n_valid, vocab_start + start, 2.0 * z_loss)
            torch.mm(logits.t(), hidden, out=grad_weight[start:end])
            if grad_hidden.dtype == logits.dtype:
                grad_hidden.addmm_(logits, w)
            else:
                grad_hidden.add_(logits @ w)
            del logits
        return grad_hidden.to(hidden.dtype), grad_weight, None, None, None, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    loss_mask: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    vocab_start: int = 0,
    valid_vocab: int | None = None,
    group: dist.ProcessGroup | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    backend: str = "auto",
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token cross-entropy of `hidden @ weight^T` against `target`, in FP32, shaped like `target`
    (with `return_lse`, also each token's log-sum-exp over the whole vocabulary, without gradient).

    hidden: [..., H]; weight: this rank's vocabulary shard [V_local, H], rows `vocab_start ...` of the
    (padded) vocabulary; target: global token ids, shaped like hidden without its last dimension.
    valid_vocab: the real vocabulary size (columns at or past it are padding); default: no padding.
    group: the tensor-parallel group the vocabulary is split over (None: not split).
    Tokens whose `loss_mask` is 0 or whose target is `ignore_index` get loss 0 and no gradient.
    backend: "triton", "torch", or "auto" (Triton where it can run on these tensors, else torch).
    """
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be auto, triton or torch, not {backend!r}")
    use_triton = triton_usable(hidden.device) if backend == "auto" else backend == "triton"
    if use_triton and not triton_usable(hidden.device):
        raise RuntimeError("the Triton backend needs the triton package and CUDA tensors (or TRITON_INTERPRET=1)")
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and target {tuple(target.shape)} do not match")
    if valid_vocab is None:
        tp = dist.get_world_size(group) if group is not None else 1
        valid_vocab = weight.shape[0] * tp
    flat_target = target.reshape(-1).long().contiguous()
    keep = flat_target != ignore_index
    if loss_mask is not None:
        keep = keep & (loss_mask.reshape(-1) != 0)
    loss, lse = _FusedLinearCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]).contiguous(), weight.contiguous(), flat_target, keep.float(),
        vocab_start, valid_vocab, float(z_loss), chunk_elements, use_triton, group,
    )
    if return_lse:
        return loss.view(target.shape), lse.view(target.shape)
    return loss.view(target.shape)
