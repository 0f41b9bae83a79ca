"""The step-time model's few calibration constants, each with where it comes from.

Everything else the model uses is either arithmetic (FLOPs, bytes moved, collective volumes) or a
datasheet figure in `gpus.py` (peak FLOP/s, HBM and link bandwidths, SM count). These constants turn
peak figures into what a training step actually reaches:

GEMM_EFFICIENCY (per precision)
    Fraction of the dense tensor-core peak a large GEMM sustains inside a training step, after wave
    quantisation and the memory roofline (both modelled separately). fp8 is set by hand (a round value,
    not a least-squares fit) so that the model meets Megatron-Bridge's
    performance summary on DGX-H100 (NeMo 26.04.01 container, FP8 current scaling, seq 8192, MBS 1):
    Llama-3-70B on 64 GPUs (TP4 PP8 VP5, GBS 256: 1,664 tokens/s/GPU), Llama-3.1-405B on 1,024 GPUs
    (TP8 PP8 CP2 VP8, GBS 1,536: 328 tokens/s/GPU) and Llama-3-8B on 8 GPUs (NeMo 25.11, GBS 128,
    5 layers recomputed: 14,451 tokens/s/GPU, 744 TFLOP/s/GPU)
    https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/performance-summary.md
    tests/unit/test_plan_perf_model.py checks the three predictions against those figures. The 16-bit
    value is NOT fitted to a published run (the summary has no dense-Llama BF16 row on H100): it is the
    usual large-GEMM fraction of H100 BF16 peak with cuBLAS (roughly 700-750 of 989 TFLOP/s); treat BF16
    predictions as less certain than FP8 ones.
ATTENTION_EFFICIENCY
    Fraction of the BF16 peak flash attention sustains over its forward (2 units of work) and backward
    (5 units: it recomputes QK^T). Flash-attention 3 / cuDNN on H100 reach about 600-700 TFLOP/s forward
    and 450-550 backward at head_dim 128 and long sequences (Shah et al., FlashAttention-3, 2024), i.e.
    about 0.5 of 989 weighted by work.
MEMORY_EFFICIENCY
    Fraction of the HBM datasheet bandwidth elementwise kernels (norms, RoPE, SwiGLU, residuals, FP8
    casts, the optimizer) reach; streaming kernels on H100 typically sustain ~80-90%.
NVLINK_EFFICIENCY, NETWORK_EFFICIENCY
    NCCL bus bandwidth of large all-gather/reduce-scatter as a fraction of the link: on DGX-H100 nccl-tests
    report ~360-370 GB/s over NVLink (450 GB/s per direction) and ~40-45 GB/s per GPU across InfiniBand
    NDR (50 GB/s per GPU).
OVERLAP_EFFICIENCY
    Of communication that runs concurrently with compute (TP overlap, the CP ring, overlapped gradient
    reduce-scatter and parameter all-gather), the fraction actually hidden: the communication kernels
    occupy SMs and HBM bandwidth the GEMMs would use. Set by hand with GEMM_EFFICIENCY["fp8"] on the 70B
    and 405B cases above, whose recipes overlap TP communication (Transformer Engine userbuffers); with
    everything hidden (1.0) the 405B prediction is 13% above the published figure.
COLLECTIVE_LATENCY_S
    Fixed cost of one NCCL collective or p2p transfer (launch and synchronisation), ~10-20 us on NVLink.
"""

from __future__ import annotations

GEMM_EFFICIENCY: dict[str, float] = {"fp8": 0.60, "bf16": 0.74, "fp16": 0.74, "fp32": 0.74}
ATTENTION_EFFICIENCY = 0.50
MEMORY_EFFICIENCY = 0.85
NVLINK_EFFICIENCY = 0.80
NETWORK_EFFICIENCY = 0.85
OVERLAP_EFFICIENCY = 0.7
COLLECTIVE_LATENCY_S = 15e-6
