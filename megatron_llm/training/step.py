"""One optimizer step (and one evaluation pass) through megatron-core's pipeline schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_llm.training.forward import global_loss


def run_schedule(model, data_iterators, forward_step_func, num_microbatches: int, seq_length: int,
                  micro_batch_size: int, forward_only: bool) -> tuple[float, float]:
    """One global batch through megatron-core's pipeline schedule; (loss sum, token count) on every rank."""
    losses = get_forward_backward_func()(
        forward_step_func=forward_step_func,
        data_iterator=data_iterators if len(model) > 1 else data_iterators[0],
        model=model,
        num_microbatches=num_microbatches,
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    return global_loss(losses)


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    skipped: bool
    num_tokens: int


def train_step(model, optimizer, scheduler, data_iterators, num_microbatches: int, seq_length: int,
               micro_batch_size: int, global_batch_size: int, forward_step_func) -> StepResult:
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    loss_sum, tokens = run_schedule(model, data_iterators, forward_step_func, num_microbatches, seq_length,
                                     micro_batch_size, forward_only=False)
    loss = loss_sum / max(tokens, 1.0)
    if not torch.isfinite(torch.tensor(loss)):
        return StepResult(loss, None, True, int(tokens))
    updated, grad_norm = guarded_optimizer_step(optimizer)
    if updated:
        scheduler.step(increment=global_batch_size)
    return StepResult(loss, grad_norm, not updated, int(tokens))


def _sub_optimizers(optimizer) -> list:
    parts = getattr(optimizer, "chained_optimizers", [optimizer])
    return [o for o in parts if not getattr(o, "is_stub_optimizer", False)]


def guarded_optimizer_step(optimizer) -> tuple[bool, float | None]:
    """megatron's optimizer step, except that a non-finite gradient norm skips the update.

    (An fp32 megatron optimizer has no loss scaler, so it would otherwise apply NaN gradients: clipping
    compares `max_norm / nan < 1`, which is False.) Returns (updated, grad_norm).
    """
    if optimizer.prepare_grads():
        return False, None
    grad_norm = float(optimizer.get_grad_norm())
    if not math.isfinite(grad_norm):
        return False, grad_norm
    for sub in _sub_optimizers(optimizer):
        params = sub.get_parameters()
        if params and sub.config.clip_grad > 0.0:
            clip_grad_by_total_norm_fp32(params, sub.config.clip_grad, grad_norm,
                                         sub.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return bool(optimizer.step_with_ready_grads()), grad_norm


@torch.no_grad()
def evaluate(model, data_iterators, num_microbatches: int, seq_length: int, micro_batch_size: int,
             eval_iters: int, forward_step_func) -> float:
    """Mean per-token loss over `eval_iters` global batches of the validation split."""
    for chunk in model:
        chunk.eval()
    loss_sum = tokens = 0.0
    for _ in range(eval_iters):
        step_sum, step_tokens = run_schedule(model, data_iterators, forward_step_func, num_microbatches,
                                              seq_length, micro_batch_size, forward_only=True)
        loss_sum += step_sum
        tokens += step_tokens
    for chunk in model:
        chunk.train()
    return loss_sum / max(tokens, 1.0)
