"""What this machine offers: CUDA, the GPU generation, Transformer Engine, apex. Detected once, never guessed.

Detection never imports Transformer Engine or apex: it asks whether they are installed (their import loads
CUDA libraries and fails or takes seconds on a machine without a GPU). Tests build a Platform by hand to
simulate a machine (e.g. an H100 with Transformer Engine) without either package present.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class Platform:
    has_cuda: bool
    gpu_name: str | None
    compute_capability: tuple[int, int] | None
    has_transformer_engine: bool
    has_apex_wgrad_fusion: bool = False
    """apex's fused_weight_gradient_mlp_cuda extension: megatron-core's gradient-accumulation fusion for its
    own linear layers (the output layer) needs it; NGC's PyTorch containers ship it."""

    @property
    def is_hopper_or_newer(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (9, 0)

    @property
    def supports_fp8(self) -> bool:
        """FP8 tensor cores (Ada sm_89, Hopper sm_90 and newer) with Transformer Engine to drive them."""
        return self.has_transformer_engine and self.compute_capability is not None \
            and self.compute_capability >= (8, 9)

    @property
    def supports_bf16(self) -> bool:
        return self.compute_capability is None or self.compute_capability >= (8, 0)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def detect_platform() -> Platform:
    import torch

    has_cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if has_cuda else None
    capability = tuple(torch.cuda.get_device_capability(0)) if has_cuda else None
    has_te = has_cuda and _installed("transformer_engine")
    has_wgrad = has_cuda and _installed("fused_weight_gradient_mlp_cuda")
    return Platform(has_cuda, name, capability, has_te, has_wgrad)


def simulated_h100(transformer_engine: bool = True, apex: bool = True) -> Platform:
    """An 8xH100 node's platform as detect_platform would report it (for tests and planning)."""
    return Platform(True, "NVIDIA H100 80GB HBM3", (9, 0), transformer_engine, apex)
