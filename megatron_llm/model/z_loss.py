"""Z-loss (PaLM): `optim.z_loss x logsumexp(logits)^2` per token, added to the cross-entropy, which keeps the
softmax normaliser near 1 and the output logits from drifting large in low precision.

The logits are split over the vocabulary across tensor-parallel ranks, so the log-sum-exp is combined like
megatron-core's vocabulary-parallel cross-entropy combines its softmax: the max all-reduced (MAX) over the
group, then the sum of exp(logit - max) all-reduced (SUM; its gradient reaches every shard unchanged). The
result is exact whatever the tensor-parallel size. Vocabulary padding carries the -1e4 logits of
`vocab.mask_padding_logits` and adds exactly 0 to the sum.

On this plain path the log-sum-exp makes an FP32 pass over the logits; with `model.fused_linear_cross_entropy`
the fused kernel adds the same term from its own running statistics instead.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.mappings import reduce_from_tensor_model_parallel_region


def vocab_parallel_logsumexp(logits: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """log(sum(exp(logits))) over the last dimension, which is split over `group` (None: not split), in FP32."""
    logits = logits.float()
    split = group is not None and dist.get_world_size(group) > 1
    with torch.no_grad():  # any shift gives the same value and gradient: the max needs none
        shift = logits.max(dim=-1).values
        if split:
            dist.all_reduce(shift, op=dist.ReduceOp.MAX, group=group)
    sum_exp = torch.exp(logits - shift.unsqueeze(-1)).sum(dim=-1)
    if split:
        sum_exp = reduce_from_tensor_model_parallel_region(sum_exp, group=group)
    return shift + torch.log(sum_exp)


class ZLossGPTModel(GPTModel):
    """GPTModel whose per-token training loss adds `z_loss x lse^2`; the last micro-batch's per-token term
    (detached, [batch, sequence]) is left in `last_z_loss` for logging (`stashed_z_loss`)."""

    def __init__(self, *args: object, z_loss: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.z_loss = z_loss
        self.last_z_loss: torch.Tensor | None = None

    def compute_language_model_loss(self, labels: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        # Before the cross-entropy, which may overwrite fp32 logits in place (megatron's, TE's).
        z = self.z_loss * vocab_parallel_logsumexp(logits, self.pg_collection.tp).square()
        loss = super().compute_language_model_loss(labels, logits)
        z = z.transpose(0, 1)  # [s b] => [b s], the loss's layout
        self.last_z_loss = z.detach()
        return loss + z


def stashed_z_loss(model: torch.nn.Module, loss_mask: torch.Tensor) -> tuple[float, float] | None:
    """(z-loss sum, token count) over the unmasked tokens of the micro-batch `model` just ran, then cleared;
    None when the model (inside its DDP wrapper) computed no z-loss (off, or not the last pipeline stage)."""
    while not hasattr(model, "last_z_loss") and hasattr(model, "module"):
        model = model.module
    z = getattr(model, "last_z_loss", None)
    if z is None:
        return None
    model.last_z_loss = None
    mask = loss_mask.to(z.device).float()
    return float((z.float() * mask).sum()), float(mask.sum())
