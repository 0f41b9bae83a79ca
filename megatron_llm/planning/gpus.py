"""Accelerators `plan` knows: dense (no sparsity) peak tensor FLOP/s per precision, memory and links.

Figures are the vendors' datasheet numbers for one device. The fp32 column is the TF32
tensor-core peak: what fp32 GEMMs reach with TF32 enabled (far less without it). Memory is
the datasheet capacity; an "80GB" part carries 80 GiB of HBM, so capacities are in GiB (2^30 bytes).
What PyTorch can allocate is a little less, which the estimator's runtime reserve accounts for.

For the step-time model each entry also carries its memory bandwidth (HBM, datasheet), its streaming
multiprocessors (GEMM tiles are scheduled in waves of that many), the GPU-to-GPU bandwidth inside a node
(NVLink per GPU and direction: H100/H200 SXM 900 GB/s bidirectional = 450 GB/s; the PCIe card talks over
PCIe 5.0 x16, 64 GB/s) and the network of the vendor's reference node (DGX H100/H200/B200: 8 x 400 Gb/s
InfiniBand per 8 GPUs; DGX A100: 8 x 200 Gb/s). `--network-gbps` and `--gpus-per-node` override the node.
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
    hbm_gbps: float = 2000.0
    sms: int = 108
    intra_node_gbps: float = 64.0
    network_gbps_per_node: float = 1600.0
    gpus_per_node: int = 8

    def peak_flops(self, precision: str) -> float:
        """Peak FLOP/s for a training precision; a clear error when the device has none."""
        if precision not in PRECISIONS:
            raise UsageError(f"unknown precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
        if precision not in self.peak_tflops:
            raise UsageError(f"--gpu {self.name} has no {precision} tensor cores; pick another precision or GPU")
        return self.peak_tflops[precision] * 1e12


def _gpu(name: str, description: str, memory_gib: float, fp32: float, bf16: float, fp8: float | None,
         links: tuple[float, int, float, float]) -> GPU:
    """`links`: HBM GB/s, SMs, GPU-to-GPU GB/s per direction inside a node, network Gb/s per 8-GPU node."""
    peaks = {"fp32": fp32, "bf16": bf16, "fp16": bf16}
    if fp8 is not None:
        peaks["fp8"] = fp8
    hbm, sms, intra, network = links
    return GPU(name, description, int(memory_gib * GIB), peaks, hbm, sms, intra, network)


GPUS: dict[str, GPU] = {
    gpu.name: gpu
    for gpu in (
        _gpu("h100", "NVIDIA H100 SXM 80GB", 80, 494.7, 989.4, 1978.9, (3350, 132, 450, 3200)),
        _gpu("h100-pcie", "NVIDIA H100 PCIe 80GB", 80, 378.0, 756.0, 1513.0, (2000, 114, 64, 3200)),
        _gpu("h200", "NVIDIA H200 SXM 141GB", 141, 494.7, 989.4, 1978.9, (4800, 132, 450, 3200)),
        _gpu("a100-40gb", "NVIDIA A100 SXM 40GB", 40, 156.0, 312.0, None, (1555, 108, 300, 1600)),
        _gpu("a100", "NVIDIA A100 SXM 80GB", 80, 156.0, 312.0, None, (2039, 108, 300, 1600)),
        _gpu("b200", "NVIDIA B200 180GB", 180, 1100.0, 2250.0, 4500.0, (8000, 148, 900, 3200)),
        _gpu("mi300x", "AMD Instinct MI300X 192GB", 192, 653.7, 1307.4, 2614.9, (5300, 304, 448, 3200)),
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


def lookup_gpu(
    name: str,
    memory_gib: float | None = None,
    peak_tflops: float | None = None,
    network_gbps: float | None = None,
    gpus_per_node: int | None = None,
) -> GPU:
    """A GPU from the table by name (case-insensitive, `_` or `-`), optionally overriding its figures.

    `peak_tflops` overrides the peak of every precision (the user states the one they train in);
    `network_gbps` is the node's total network bandwidth in Gb/s, `gpus_per_node` the GPUs sharing it.
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
    if network_gbps is not None:
        if network_gbps <= 0:
            raise UsageError(f"--network-gbps must be positive, got {network_gbps}")
        gpu = replace(gpu, network_gbps_per_node=network_gbps)
    if gpus_per_node is not None:
        if gpus_per_node < 1:
            raise UsageError(f"--gpus-per-node must be at least 1, got {gpus_per_node}")
        gpu = replace(gpu, gpus_per_node=gpus_per_node)
    return gpu


def custom_gpu(memory_bytes: int, peak_tflops: float | None = None) -> GPU:
    """A device described only by its memory (e.g. the trainer checking a GPU not in the table)."""
    peaks = {p: peak_tflops for p in PRECISIONS} if peak_tflops else {}
    return GPU("custom", "GPU", int(memory_bytes), peaks)
