"""Accelerators `plan` knows: dense (no sparsity) peak tensor FLOP/s per precision and memory.

Figures are the vendors' datasheet numbers for one device. The fp32 column is the TF32
tensor-core peak: what fp32 GEMMs reach with TF32 enabled (far less without it). Memory is
the datasheet capacity; an "80GB" part carries 80 GiB of HBM, so capacities are in GiB (2^30 bytes).
What PyTorch can allocate is a little less, which the estimator's runtime reserve accounts for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from megatron_llm.errors import UsageError

PRECISIONS = ("fp32", "bf16", "fp16", "fp8")
GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    description: str
    memory_bytes: int
    peak_tflops: dict[str, float]

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s for a training precision; a clear error when the device has none."""
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision not in self.peak_tflops:
            raise UsageError(f"--gpu {self.name} has no {precision} tensor cores; pick another precision or GPU")
        return self.peak_tflops[precision] * 1e12


def _gpu(name: str, description: str, memory_gib: float, fp32: float, bf16: float, fp8: float | None) -> GPU:
    peaks = {"fp32": fp32, "bf16": bf16, "fp16": bf16}
    if fp8 is not None:
        peaks["fp8"] = fp8
    return GPU(name, description, int(memory_gib * GIB), peaks)


GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        _gpu("h100", "NVIDIA H100 SXM 80GB", 80, 494.7, 989.4, 1978.9),
        _gpu("h100-pcie", "NVIDIA H100 PCIe 80GB", 80, 378.0, 756.0, 1513.0),
        _gpu("h200", "NVIDIA H200 SXM 141GB", 141, 494.7, 989.4, 1978.9),
        _gpu("a100-40gb", "NVIDIA A100 SXM 40GB", 40, 156.0, 312.0, None),
        _gpu("a100", "NVIDIA A100 SXM 80GB", 80, 156.0, 312.0, None),
        _gpu("b200", "NVIDIA B200 180GB", 180, 1100.0, 2250.0, 4500.0),
        _gpu("mi300x", "AMD Instinct MI300X 192GB", 192, 653.7, 1307.4, 2614.9),
    )
}

ALIASES = {
    "h100-sxm": "h100",
    "h100-80gb": "h100",
    "a100-80gb": "a100",
    "a100-sxm": "a100",
    "a100-40": "a100-40gb",
    "a100-80": "a100",
}


def gpu_names() -> list[str]:
    return sorted(GPUS) + sorted(ALIASES)


def lookup_gpu(name: str, memory_gib: float | None = None, peak_tflops: float | None = None) -> GPU:
    """A GPU from the table by name (case-insensitive, `_` or `-`), optionally overriding its figures.

    `peak_tflops` overrides the peak of every precision (the user states the one they train in).
    """
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    key = ALIASES.get(key, key)
    if key not in GPUS:
        raise UsageError(f"--gpu: unknown GPU {name!r}; known: {', '.join(gpu_names())}")
    gpu = GPUS[key]
    if memory_gib is not None:
        if memory_gib <= 0:
            raise UsageError(f"--gpu-memory-gib must be positive, got {memory_gib}")
        gpu = replace(gpu, memory_bytes=int(memory_gib * GIB))
    if peak_tflops is not None:
        if peak_tflops <= 0:
            raise UsageError(f"--peak-tflops must be positive, got {peak_tflops}")
        gpu = replace(gpu, peak_tflops={p: peak_tflops for p in PRECISIONS})
    return gpu


def custom_gpu(memory_bytes: int, peak_tflops: float | None = None) -> GPU:
    """A device described only by its memory (e.g. the trainer checking a GPU not in the table)."""
    peaks = {p: peak_tflops for p in PRECISIONS} if peak_tflops else {}
    return GPU("custom", "GPU", int(memory_bytes), peaks)
