"""Run unmodified megatron-core on a machine without CUDA.

megatron-core assumes CUDA in many places: `torch.cuda.current_device()`, `device="cuda"`, `.cuda()`,
the CUDA RNG state tracker, and `tensor.type() == "torch.cuda.FloatTensor"` checks in the optimizer. On
a CPU-only machine (never when CUDA is present) this module answers those calls with CPU equivalents so
that GPTModel, the pipeline schedules, DDP and the optimizers run over gloo. Nothing in megatron-core's
files is changed; everything here is a runtime substitution, installed once per process.
"""

from __future__ import annotations

import logging
import os

import torch
from torch.overrides import TorchFunctionMode

_CPU = torch.device("cpu")
_installed = False


def _is_cuda_device(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites `device="cuda"`, `device=<int>` and `.to("cuda")` arguments to the CPU for every call."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.autograd.backward:
            return _backward_in_mode(self, *args, **kwargs)
        if func is torch.Tensor.backward:
            tensor, gradient = args[0], args[1] if args[1:] else kwargs.get("gradient")
            return _backward_in_mode(self, tensor, gradient, kwargs.get("retain_graph"),
                                     kwargs.get("create_graph", False), kwargs.get("inputs"))
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": _CPU}
        if func is torch.Tensor.to and args[1:] and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        return func(*args, **kwargs)


def _backward_in_mode(mode: TorchFunctionMode, tensors, grad_tensors=None, retain_graph=None,
                      create_graph: bool = False, inputs=None) -> None:
    """`torch.autograd.backward` with the mode kept active for everything the autograd engine runs.

    A mode's handler runs with the mode switched off, so a backward pass dispatched through it would
    run megatron's backward code (recomputed forwards under activation recompute, buffers allocated on
    `torch.cuda.current_device()`) without the CUDA-to-CPU rewriting. This repeats the tail of
    `torch.autograd.backward` (torch 2.13) with the mode re-entered around the engine call.
    """
    from torch.autograd import _make_grads, _tensor_or_tensors_to_tuple
    from torch.autograd.graph import _engine_run_backward

    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    inputs = () if inputs is None else ((inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs))
    grads = _make_grads(tensors, _tensor_or_tensors_to_tuple(grad_tensors, len(tensors)), is_grads_batched=False)
    with mode:
        _engine_run_backward(tensors, grads, create_graph if retain_graph is None else retain_graph, create_graph,
                             inputs, allow_unreachable=True, accumulate_grad=True)


_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


def _patch_cuda_module() -> None:
    cuda = torch.cuda

    def current_device() -> torch.device:
        # A device object (not an index) also works where the function mode below is not active,
        # e.g. inside megatron's autograd Functions during backward.
        return _CPU

    def device_count() -> int:
        return 1

    def set_device(device: object) -> None:
        return None

    def synchronize(device: object = None) -> None:
        return None

    def empty_cache() -> None:
        return None

    def get_rng_state(device: object = "cuda") -> torch.Tensor:
        return torch.get_rng_state()

    def set_rng_state(new_state: torch.Tensor, device: object = "cuda") -> None:
        torch.set_rng_state(new_state)

    def manual_seed(seed: int) -> None:
        torch.default_generator.manual_seed(int(seed))

    def manual_seed_all(seed: int) -> None:
        torch.default_generator.manual_seed(int(seed))

    for name, replacement in {
        "current_device": current_device,
        "device_count": device_count,
        "set_device": set_device,
        "synchronize": synchronize,
        "empty_cache": empty_cache,
        "get_rng_state": get_rng_state,
        "set_rng_state": set_rng_state,
        "manual_seed": manual_seed,
        "manual_seed_all": manual_seed_all,
    }.items():
        setattr(cuda, name, replacement)
    cuda.random.get_rng_state = get_rng_state
    cuda.random.set_rng_state = set_rng_state
    cuda.random.manual_seed = manual_seed
    cuda.random.manual_seed_all = manual_seed_all


def _patch_tensor_and_module() -> None:
    original_type = torch.Tensor.type

    def tensor_cuda(self: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return self

    def module_cuda(self: torch.nn.Module, device: object = None) -> torch.nn.Module:
        return self

    def tensor_type(self: torch.Tensor, *args: object, **kwargs: object):
        if args or kwargs:
            return original_type(self, *args, **kwargs)
        name = original_type(self)
        return _CUDA_TYPE_NAMES.get(name, name)

    torch.Tensor.cuda = tensor_cuda
    torch.nn.Module.cuda = module_cuda
    torch.Tensor.type = tensor_type


def _patch_megatron_rng() -> None:
    """megatron's tracker swaps "CUDA" generator states; on CPU that generator is torch's default one."""
    from megatron.core.tensor_parallel import random as mp_random

    def get_state(device: object = "cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
        return torch.get_rng_state()

    def set_state(new_state: torch.Tensor, device: object = -1, graph_safe: bool = False) -> None:
        torch.set_rng_state(new_state)

    mp_random._get_cuda_rng_state = get_state
    mp_random._set_cuda_rng_state = set_state

    class _DropRngWarning(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "CPU RNG state changed within GPU RNG context" not in record.getMessage()

    logging.getLogger(mp_random.__name__).addFilter(_DropRngWarning())


def cpu_compat_needed() -> bool:
    return not torch.cuda.is_available()


def install_cpu_compat() -> bool:
    """Install the compatibility layer if CUDA is absent; returns whether it is active. Idempotent."""
    global _installed
    if _installed:
        return True
    if not cpu_compat_needed():
        return False
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    _patch_cuda_module()
    _patch_tensor_and_module()
    _patch_megatron_rng()
    _CudaToCpuMode().__enter__()
    _installed = True
    return True
