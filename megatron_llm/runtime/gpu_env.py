"""Process environment of the fastest published H100 recipe (Megatron-Bridge's Llama-3 perf recipes).

These variables must be in the environment before CUDA, NCCL and Transformer Engine start, so launchers
(torchrun wrappers, sbatch scripts, the GPU benchmark) set them, and only where the user has not: a value
already in the environment always wins. On a machine without CUDA there is nothing to set.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from megatron_llm.config.schema import Config
from megatron_llm.runtime.hardware import Platform


def recipe_environment(config: Config, platform: Platform) -> dict[str, str]:
    """The variables the recipe sets for this config on this machine (empty without CUDA).

    CUDA_DEVICE_MAX_CONNECTIONS: 1 when tensor or context parallelism overlaps its communication with
    compute (megatron-core needs the kernels queued in issue order then), else 32 (the FP8 TP=1 recipe).
    The layer-norm SM margin leaves 20 SMs to the communication kernels that run beside the norms.
    """
    if not platform.has_cuda:
        return {}
    p = config.parallel
    return {
        "CUDA_DEVICE_MAX_CONNECTIONS": "1" if p.tensor > 1 or p.context > 1 else "32",
        "TORCH_NCCL_HIGH_PRIORITY": "1",
        "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "NVTE_FWD_LAYERNORM_SM_MARGIN": "20",
        "NVTE_BWD_LAYERNORM_SM_MARGIN": "20",
    }


def apply_recipe_environment(config: Config, platform: Platform,
                             environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the recipe's variables that `environ` (default: os.environ) lacks; returns those it set."""
    environ = os.environ if environ is None else environ
    added = {k: v for k, v in recipe_environment(config, platform).items() if k not in environ}
    environ.update(added)
    return added
