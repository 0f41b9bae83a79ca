"""Per-layer-group gradient and parameter L2 norms every `logging.norms_interval` steps, as their own record
(`grad_norm/layers.3`, `param_norm/embedding`, ...) at the step they describe.

Groups: `embedding`, `layers.N` (global layer number, from 0), `final_norm`, `output_layer`. Each element of
the model counts exactly once over the world, whatever the layout: tensor-parallel duplicates (norm weights)
only on tensor rank 0, shared embeddings only where megatron marks them unshared, and gradients from the
reduced gradient buffer: with the distributed optimizer each data-parallel rank counts the shard it reduced,
without it data-parallel rank 0 counts the (identical) whole; parameters likewise. One
all-reduce of the squared sums per group. Gradients are read after the optimizer step: the clipped ones
when clipping applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from megatron.core import parallel_state
from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate
from megatron.core.transformer.module import param_is_not_shared

from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.checkpoint.save_load import unwrap

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult


def group_of(name: str, layers: torch.nn.ModuleList | None) -> str:
    """The layer group of a parameter name inside one model chunk."""
    parts = name.split(".")
    if parts[:2] == ["decoder", "layers"] and layers is not None:
        return f"layers.{layers[int(parts[2])].layer_number - 1}"
    if parts[0] == "decoder":
        return "final_norm"
    return parts[0]


def _owned(chunk, param: torch.nn.Parameter) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(gradient elements, parameter elements) of `param` that this rank counts; None where another rank does.

    With the distributed optimizer both come from this data-parallel rank's shard of the bucket (its
    parameter shard is up to date right after the step, even when the all-gather overlaps the next forward).
    """
    dp_rank = parallel_state.get_data_parallel_rank(with_context_parallel=True)
    dp_size = parallel_state.get_data_parallel_world_size(with_context_parallel=True)
    grad = getattr(param, "main_grad", None)
    if not chunk.ddp_config.use_distributed_optimizer:
        if dp_rank != 0:
            return None, None
        return (grad.detach().reshape(-1) if grad is not None else None), param.detach().reshape(-1)
    for buffer in chunk.buffers + chunk.expert_parallel_buffers:
        for bucket in buffer.buckets:
            if param in bucket.params:
                start, end = bucket.param_to_index[param]
                shard = bucket.grad_data.numel() // dp_size
                lo, hi = max(start, dp_rank * shard), min(end, (dp_rank + 1) * shard)
                if lo >= hi:
                    return None, None
                params = bucket.param_data[lo:hi] if bucket.param_data is not None else None
                return bucket.grad_data[lo:hi], params
    return None, None


def layer_group_norms(model: list) -> dict[str, float]:
    """{"grad_norm/<group>": ..., "param_norm/<group>": ...} over the whole model (a world collective)."""
    local: dict[str, list[float]] = {}
    for chunk in model:
        inner = unwrap(chunk)
        decoder = getattr(inner, "decoder", None)
        layers = getattr(decoder, "layers", None)
        for name, param in inner.named_parameters():
            group = local.setdefault(group_of(name, layers), [0.0, 0.0])
            if not (param_is_not_shared(param) and param_is_not_tensor_parallel_duplicate(param)):
                continue
            grad, data = _owned(chunk, param)
            if grad is not None:
                group[0] += float(grad.float().square().sum())
            if data is not None:
                group[1] += float(data.float().square().sum())
    names: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(names, sorted(local))
    groups = sorted({g for part in names for g in part})
    sums = torch.tensor([local.get(g, [0.0, 0.0]) for g in groups], dtype=torch.float64).reshape(-1, 2)
    if torch.cuda.is_available():
        sums = sums.cuda()
    torch.distributed.all_reduce(sums)
    norms = sums.sqrt().cpu().tolist()
    return {**{f"grad_norm/{g}": n[0] for g, n in zip(groups, norms)},
            **{f"param_norm/{g}": n[1] for g, n in zip(groups, norms)}}


class LayerNorms(Callback):
    def __init__(self, interval: int) -> None:
        self.interval = interval

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        step = trainer.state.step
        if step % self.interval == 0:
            trainer.log({"step": step, "consumed_samples": trainer.state.consumed_samples,
                         **layer_group_norms(trainer.model)})
