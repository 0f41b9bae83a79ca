"""Runtime corrections for megatron-core 0.16.1's distributed optimizer on torch's AdamW (no TE/apex).

Without TE or apex the distributed optimizer steps a `torch.optim.AdamW`, which keeps a `step` per
parameter. Three things in 0.16.1 break checkpointing on that path:
- its `state_dict()` asserts that the inner optimizer has state, so a fresh optimizer cannot be saved or
  loaded into before its first update;
- `load_state_dict()` gives every parameter the same `step` tensor, which AdamW then advances once per
  parameter per step, so the bias correction of a resumed run silently diverges;
- loading a `fully_reshardable` checkpoint copies a per-parameter `step` the checkpoint does not hold.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def torch_optimizers(optimizer: object) -> list[torch.optim.Optimizer]:
    """The torch optimizers inside a megatron optimizer (chained or not)."""
    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    inner = [getattr(part, "optimizer", None) for part in parts]
    return [opt for opt in inner if isinstance(opt, torch.optim.Optimizer)]


def _is_distributed(optimizer: object) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    return any(isinstance(part, DistributedOptimizer) for part in parts)


def ensure_optimizer_state(optimizer: object) -> None:
    """Give a distributed optimizer's AdamW the zero state it would create on its first update."""
    if not _is_distributed(optimizer):
        return
    for opt in torch_optimizers(optimizer):
        if not isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            continue
        for group in opt.param_groups:
            for param in group["params"]:
                if param not in opt.state or not opt.state[param]:
                    opt.state[param] = {
                        "step": torch.tensor(0.0, dtype=torch.float32),
                        "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
                    }


def untie_adam_steps(optimizer: object) -> int:
    """Give each parameter its own `step` tensor after loading; returns how many were shared."""
    shared = 0
    for opt in torch_optimizers(optimizer):
        seen: set[int] = set()
        for state in opt.state.values():
            step = state.get("step")
            if not isinstance(step, torch.Tensor):
                continue
            if id(step) in seen:
                shared += 1
            seen.add(id(step))
            state["step"] = step.detach().clone()
    return shared


def _copy_present_states(part: object):
    """`_set_main_param_and_optimizer_states` that copies only the states the checkpoint has.

    0.16.1 copies every key of the live AdamW state, including the per-parameter `step` its
    fully-reshardable checkpoints do not contain (KeyError); `step` comes from the param groups instead.
    """

    def copy(model_param, tensors: dict) -> None:
        group_index, group_order = part.model_param_group_index_map[model_param]
        main_param = part.optimizer.param_groups[group_index]["params"][group_order]
        destinations = {"param": main_param, **part.optimizer.state[main_param]}
        with torch.no_grad():
            for key, source in tensors.items():
                if key in destinations:
                    destinations[key].copy_(source)

    return copy


@contextmanager
def tolerant_state_loading(optimizer: object):
    """Within the block, distributed optimizers load checkpoints that lack AdamW's per-parameter `step`."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    parts = getattr(optimizer, "chained_optimizers", None) or [optimizer]
    patched = [p for p in parts if isinstance(p, DistributedOptimizer)
               and not p.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8]
    for part in patched:
        part._set_main_param_and_optimizer_states = _copy_present_states(part)
    try:
        yield
    finally:
        for part in patched:
            del part._set_main_param_and_optimizer_states
