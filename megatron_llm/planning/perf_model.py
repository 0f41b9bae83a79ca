"""Predicted step time of a parallel layout, part by part, from the model's shapes and the hardware.

One micro-batch on one pipeline rank is the unit. For every transformer layer it holds (per chunk, as
`stages.py` splits them) the rank runs, forward and backward:

- four GEMMs (QKV, attention projection, SwiGLU fc1, fc2), TP-sliced: T x h x (q + 2kv)/t and so on, with
  T = micro_batch x seq / CP tokens. Each runs at the precision's achievable efficiency times its wave
  quantisation (tiles of 128 x 256 spread over the SMs: a TP-sliced GEMM with few tiles leaves SMs idle)
  and never faster than its operands can stream from HBM. Backward is two GEMMs of the same size (data
  and weight gradients).
- flash attention: forward 2·T·s·q/t FLOPs (causal), backward 2.5x that, at ATTENTION_EFFICIENCY of BF16.
- elementwise work (norms, residual adds, RoPE, SwiGLU, FP8 casts) as bytes through HBM.
- with TP > 1 and sequence parallelism, per layer 2 all-gathers + 2 reduce-scatters of T x h forward and
  6 backward (the inputs are gathered again for the weight gradients); exposed unless TP communication
  overlap is on, then only what exceeds the GEMM time it hides behind. A TP group wider than a node
  runs at the network's per-GPU bandwidth.
- with CP > 1, the ring passes K and V (CP - 1) times forward and twice that backward, overlapped with the
  attention kernels (only the excess is exposed).
- between pipeline stages, each chunk sends its activations forward and its gradients back; the
  interleaved schedule overlaps these transfers with the rank's compute, the plain 1F1B one does not.

The last stage adds the output layer (a BF16 GEMM T x h x V/t) and the vocabulary-parallel cross-entropy;
the first, the embedding lookup. The busiest rank sets the pace: a step of m micro-batches takes
m·W + (PP - 1)·W/VPP, W the busiest rank's time per micro-batch, so the bubble is (PP - 1)/(m·VPP).
Recompute adds the recomputed forward passes (all layers for full/uniform, the attention core for
selective, `recompute_layers` per chunk for the block method). After the last micro-batch the gradients
are reduce-scattered (all-reduced without the distributed optimizer) over DP x CP, hidden behind the last
micro-batch's backward when overlap_grad_reduce is on; the updated parameters are all-gathered, hidden
behind the next step's first forward when overlap_param_gather is on; the Adam step streams its state
through HBM.

Megatron-core places ranks TP fastest, then CP, DP, PP: the TP group is TP consecutive GPUs, CP groups
span TP x CP GPUs, the gradient group TP x CP x DP. A group that fits in a node uses NVLink; one that does
not, the per-GPU share of the node's network. Calibration constants live in `calibration.py`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from megatron_llm.config.schema import ModelConfig
from megatron_llm.model.flops import flops_per_token
from megatron_llm.model.params import vocab_size_of
from megatron_llm.model.vocab import padded_vocab_size
from megatron_llm.planning import calibration as cal
from megatron_llm.planning.gpus import GPU
from megatron_llm.planning.layer_split import EVEN, PipelineSplit, chunk_counts

TILE_M, TILE_N = 128, 256
ACT_BYTES = 2  # activations and TP/CP/PP traffic in BF16
ADAM_BYTES_PER_ELEMENT = 34  # fp32 master, exp_avg, exp_avg_sq read+write, fp32 grad read, bf16 param write
GEMM_INPUT_BYTES = {"fp8": 1, "bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Workload:
    """One layout of one model on one cluster: everything the step time depends on."""

    model: ModelConfig
    seq_length: int
    global_batch: int
    micro_batch: int
    tensor: int
    pipeline: int
    virtual: int | None
    context: int
    data: int
    precision: str
    gpu: GPU
    split: PipelineSplit = EVEN
    recompute: str = "none"
    recompute_layers: int | None = None
    distributed_optimizer: bool = True
    tp_comm_overlap: bool = False
    overlap_grad_reduce: bool = True
    overlap_param_gather: bool = False
    grad_reduce_bytes: int = 4
    mfu: float | None = None

    @property
    def world(self) -> int:
        return self.tensor * self.pipeline * self.context * self.data

    @property
    def microbatches(self) -> int:
        return self.global_batch // (self.micro_batch * self.data)

    @property
    def vpp(self) -> int:
        return self.virtual if (self.virtual or 1) > 1 and self.pipeline > 1 else 1


@dataclass(frozen=True)
class StepTime:
    """Seconds per optimizer step and where they go (the parts add up to `total`)."""

    compute: float
    recompute: float
    tp_comm: float
    cp_comm: float
    pp_comm: float
    bubble: float
    dp_comm: float
    optimizer: float
    num_microbatches: int
    bubble_fraction: float
    model_flops_per_step: float
    peak_flops: float
    world: int

    @property
    def total(self) -> float:
        return (self.compute + self.recompute + self.tp_comm + self.cp_comm + self.pp_comm + self.bubble
                + self.dp_comm + self.optimizer)

    @property
    def exposed_comm(self) -> float:
        return self.tp_comm + self.cp_comm + self.pp_comm + self.dp_comm

    @property
    def mfu(self) -> float:
        return self.model_flops_per_step / (self.total * self.world * self.peak_flops)

    @property
    def tflops_per_gpu(self) -> float:
        return self.model_flops_per_step / self.total / self.world / 1e12

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "exposed_comm": self.exposed_comm, "mfu": self.mfu,
                "tflops_per_gpu": self.tflops_per_gpu}


@dataclass(frozen=True)
class _Phase:
    """Seconds of one layer, one micro-batch, one direction."""

    gemm: float
    attention: float
    elementwise: float
    tp: float
    cp: float

    @property
    def busy(self) -> float:
        return self.gemm + self.attention + self.elementwise + self.tp + self.cp


def gemm_seconds(m: int, k: int, n: int, precision: str, gpu: GPU, efficiency: float | None = None) -> float:
    """One M x K x N GEMM: efficiency-scaled peak with wave quantisation, floored by HBM traffic."""
    flops = 2.0 * m * k * n
    tiles = math.ceil(m / TILE_M) * math.ceil(n / TILE_N)
    waves = math.ceil(tiles / gpu.sms)
    occupancy = tiles / (waves * gpu.sms)
    eff = cal.GEMM_EFFICIENCY[precision] if efficiency is None else efficiency
    compute = flops / (gpu.peak_flops(precision) * eff * occupancy)
    in_bytes = GEMM_INPUT_BYTES[precision]
    memory = ((m * k + k * n) * in_bytes + m * n * ACT_BYTES) / (gpu.hbm_gbps * 1e9 * cal.MEMORY_EFFICIENCY)
    return max(compute, memory)


def overlapped(comm: float, window: float) -> float:
    """Exposed seconds of `comm` run concurrently with `window` seconds of compute: only OVERLAP_EFFICIENCY
    of the overlapping part is hidden (the communication kernels take SMs and memory bandwidth)."""
    return comm - cal.OVERLAP_EFFICIENCY * min(comm, window)


def collective_seconds(bytes_per_gpu: float, bandwidth_gbps: float, efficiency: float) -> float:
    """One NCCL collective moving `bytes_per_gpu` through each GPU's link."""
    if bytes_per_gpu <= 0:
        return 0.0
    return cal.COLLECTIVE_LATENCY_S + bytes_per_gpu / (bandwidth_gbps * 1e9 * efficiency)


def group_link(w: Workload, span: int) -> tuple[float, float]:
    """(GB/s per GPU, efficiency) of a group spanning `span` consecutive ranks."""
    if span <= w.gpu.gpus_per_node:
        return w.gpu.intra_node_gbps, cal.NVLINK_EFFICIENCY
    return w.gpu.network_gbps_per_node / 8 / w.gpu.gpus_per_node, cal.NETWORK_EFFICIENCY


def _compute_precision(w: Workload) -> str:
    return w.precision if w.precision in cal.GEMM_EFFICIENCY else "bf16"


def _layer(w: Workload) -> tuple[_Phase, _Phase]:
    """Forward and backward seconds of one transformer layer for one micro-batch on one rank."""
    m = w.model
    t, c = w.tensor, w.context
    tokens = w.micro_batch * w.seq_length // c
    h, f = m.hidden_size, m.ffn_hidden_size
    q, kv = m.num_attention_heads * m.head_dim, m.query_groups * m.head_dim
    prec = _compute_precision(w)
    shapes = [(h, (q + 2 * kv) // t), (q // t, h), (h, 2 * f // t), (f // t, h)]
    gemm_fwd = sum(gemm_seconds(tokens, k, n, prec, w.gpu) for k, n in shapes)
    attn_flops = 2.0 * tokens * w.seq_length * q / t
    bf16_peak = w.gpu.peak_flops("bf16") if "bf16" in w.gpu.peak_tflops else w.gpu.peak_flops(prec)
    attn_fwd = attn_flops / (bf16_peak * cal.ATTENTION_EFFICIENCY)
    sp = t if t > 1 else 1
    a = ACT_BYTES
    elem = a * tokens * (10 * h / sp + 2 * (q + kv) / t + 3 * f / t)  # norms, residuals, RoPE, SwiGLU
    if w.precision == "fp8":
        elem += (a + 1) * tokens * (2 * h + q / t + f / t)  # casts of the four GEMM inputs
    elem_fwd = elem / (w.gpu.hbm_gbps * 1e9 * cal.MEMORY_EFFICIENCY)
    tp_fwd = tp_bwd = 0.0
    if t > 1:
        bandwidth, eff = group_link(w, t)
        one = collective_seconds((t - 1) / t * tokens * h * a, bandwidth, eff)
        tp_fwd, tp_bwd = 4 * one, 6 * one
        if w.tp_comm_overlap:
            tp_fwd, tp_bwd = overlapped(tp_fwd, gemm_fwd), overlapped(tp_bwd, 2 * gemm_fwd)
    cp_fwd = cp_bwd = 0.0
    if c > 1:
        bandwidth, eff = group_link(w, t * c)
        step = collective_seconds(tokens * 2 * kv / t * a, bandwidth, eff)
        cp_fwd = overlapped((c - 1) * step, attn_fwd)
        cp_bwd = overlapped(2 * (c - 1) * step, 2.5 * attn_fwd)
    forward = _Phase(gemm_fwd, attn_fwd, elem_fwd, tp_fwd, cp_fwd)
    backward = _Phase(2 * gemm_fwd, 2.5 * attn_fwd, 2 * elem_fwd, tp_bwd, cp_bwd)
    return forward, backward


def _output_layer(w: Workload) -> float:
    """Forward + backward seconds of the output GEMM (BF16) and the cross-entropy on the last stage."""
    m = w.model
    tokens = w.micro_batch * w.seq_length // w.context
    vocab = padded_vocab_size(vocab_size_of(m), m.make_vocab_size_divisible_by, w.tensor) // w.tensor
    prec = "bf16" if "bf16" in w.gpu.peak_tflops else _compute_precision(w)
    gemm = 3 * gemm_seconds(tokens, m.hidden_size, vocab, prec, w.gpu)
    loss = 6 * tokens * vocab * 4 / (w.gpu.hbm_gbps * 1e9 * cal.MEMORY_EFFICIENCY)
    return gemm + loss


def _scale_to_mfu(w: Workload, forward: _Phase, backward: _Phase) -> tuple[_Phase, _Phase]:
    """With a measured MFU, the layer's kernels run at that fraction of peak on its model FLOPs."""
    per_token = flops_per_token(w.model, w.seq_length, w.tensor, recompute="none")
    layer_flops = (per_token.dense + per_token.attention) / w.model.num_layers
    tokens = w.micro_batch * w.seq_length // w.context
    seconds = layer_flops * tokens / w.tensor / (w.gpu.peak_flops(w.precision) * w.mfu)
    kernels = forward.gemm + forward.attention + forward.elementwise
    kernels += backward.gemm + backward.attention + backward.elementwise
    scale = seconds / kernels

    def scaled(phase: _Phase) -> _Phase:
        return _Phase(phase.gemm * scale, phase.attention * scale, phase.elementwise * scale, phase.tp, phase.cp)

    return scaled(forward), scaled(backward)


def _recomputed_forward(w: Workload, layers: int, forward: _Phase) -> float:
    if w.recompute == "full":
        count = layers if w.recompute_layers is None else min(layers, w.recompute_layers)
        return count * forward.busy
    if w.recompute == "selective":
        return layers * forward.attention
    return 0.0


def _rank_parameters(w: Workload, layers: int, first: bool, last: bool) -> float:
    m = w.model
    h, f, t = m.hidden_size, m.ffn_hidden_size, w.tensor
    q, kv = m.num_attention_heads * m.head_dim, m.query_groups * m.head_dim
    per_layer = (h * (q + 2 * kv) + q * h + 3 * h * f) / t + 2 * h
    vocab = padded_vocab_size(vocab_size_of(m), m.make_vocab_size_divisible_by, t) / t * h
    params = layers * per_layer
    if first:
        params += vocab
    if last and (not m.tie_embeddings or not first):
        params += vocab  # the output layer, or with tied embeddings the last stage's copy
    return params


def step_time(w: Workload) -> StepTime:
    """The step-time model for one workload (see the module docstring)."""
    forward, backward = _layer(w)
    if w.mfu is not None:
        forward, backward = _scale_to_mfu(w, forward, backward)
    counts = chunk_counts(w.model.num_layers, w.pipeline, w.virtual, w.split)
    tokens = w.micro_batch * w.seq_length // w.context
    sp = w.tensor if w.tensor > 1 else 1
    p2p = 0.0
    if w.pipeline > 1:
        bandwidth, eff = group_link(w, w.tensor * w.context * w.data + 1)
        p2p = 2 * w.vpp * collective_seconds(tokens * w.model.hidden_size / sp * ACT_BYTES, bandwidth, eff)
    best: tuple[float, dict] | None = None
    for rank in sorted({0, min(1, w.pipeline - 1), w.pipeline - 1}):  # middle ranks are all alike
        chunks = counts[rank]
        layers = sum(chunks)
        first, last = rank == 0, rank == w.pipeline - 1
        parts = {
            "compute": layers * (forward.gemm + forward.attention + forward.elementwise
                                 + backward.gemm + backward.attention + backward.elementwise),
            "recompute": sum(_recomputed_forward(w, n, forward) for n in chunks),
            "tp": layers * (forward.tp + backward.tp),
            "cp": layers * (forward.cp + backward.cp),
            "pp": p2p if w.pipeline > 1 else 0.0,
            "forward": layers * forward.busy,
            "backward": layers * backward.busy,
            "params": _rank_parameters(w, layers, first, last),
        }
        if last:
            parts["compute"] += _output_layer(w)
        if w.vpp > 1:
            parts["pp"] = overlapped(parts["pp"], parts["compute"])
        work = parts["compute"] + parts["recompute"] + parts["tp"] + parts["cp"] + parts["pp"]
        if best is None or work > best[0]:
            best = (work, parts)
    assert best is not None
    work, parts = best
    m_count = w.microbatches
    bubble_fraction = (w.pipeline - 1) / (m_count * w.vpp)
    dp_comm = _dp_seconds(w, parts["params"], parts["forward"], parts["backward"])
    owned = parts["params"] / (w.data * w.context) if w.distributed_optimizer else parts["params"]
    optimizer = owned * ADAM_BYTES_PER_ELEMENT / (w.gpu.hbm_gbps * 1e9 * cal.MEMORY_EFFICIENCY)
    per_token = flops_per_token(w.model, w.seq_length, w.tensor, recompute="none")
    return StepTime(
        compute=m_count * parts["compute"],
        recompute=m_count * parts["recompute"],
        tp_comm=m_count * parts["tp"],
        cp_comm=m_count * parts["cp"],
        pp_comm=m_count * parts["pp"],
        bubble=bubble_fraction * m_count * work,
        dp_comm=dp_comm,
        optimizer=optimizer,
        num_microbatches=m_count,
        bubble_fraction=bubble_fraction,
        model_flops_per_step=float(per_token.model) * w.global_batch * w.seq_length,
        peak_flops=w.gpu.peak_flops(w.precision),
        world=w.world,
    )


def _dp_seconds(w: Workload, params: float, forward: float, backward: float) -> float:
    """Exposed gradient reduction and parameter gathering over the DP x CP group."""
    group = w.data * w.context
    if group == 1:
        return 0.0
    bandwidth, eff = group_link(w, w.tensor * w.context * w.data)
    share = (group - 1) / group * params
    if w.distributed_optimizer:
        reduce = collective_seconds(share * w.grad_reduce_bytes, bandwidth, eff)
        gather = collective_seconds(share * ACT_BYTES, bandwidth, eff)
    else:
        reduce = collective_seconds(2 * share * w.grad_reduce_bytes, bandwidth, eff)
        gather = 0.0
    if w.overlap_grad_reduce:
        reduce = overlapped(reduce, backward)
    if w.overlap_param_gather and w.distributed_optimizer:
        gather = overlapped(gather, forward)
    return reduce + gather
