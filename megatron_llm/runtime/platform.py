"""What this machine offers: CUDA, the GPU generation, Transformer Engine. Detected once, never guessed."""

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

    @property
    def is_hopper_or_newer(self) -> bool:
        return self.compute_capability is not None and self.compute_capability >= (9, 0)


@functools.cache
def detect_platform() -> Platform:
    import torch

    has_cuda = torch.cuda.is_available()
    name = torch.cuda.get_device_name(0) if has_cuda else None
    capability = tuple(torch.cuda.get_device_capability(0)) if has_cuda else None
    has_te = has_cuda and importlib.util.find_spec("transformer_engine") is not None
    return Platform(has_cuda, name, capability, has_te)
