"""Peak memory per rank: weights, gradients, optimizer state, activations and buffers.

Static memory follows what megatron-core allocates for the engine's settings (training/optimizer.py):

- weights: the parameters in the training dtype; with the distributed optimizer they live in DDP's
  padded parameter buffer.
- gradients: DDP's gradient buffer, fp32 (`grad_reduce_in_fp32` whenever the dtype is bf16/fp16; `plan
  --grad-reduce-dtype bf16` models megatron-core's grad_reduce_in_fp32=False, 2 bytes).
- optimizer: Adam's exp_avg and exp_avg_sq in fp32 (8 bytes) plus, for bf16/fp16 weights, an fp32
  master copy (4 bytes), plus AdamW's per-tensor `step`; the distributed optimizer keeps these only
  for this rank's slice of each bucket. Buffers are padded for, and state sharded over, the DP x CP group
  (megatron-core's DDP uses the data-parallel group with context parallelism).

Activations come from `activations.py`. Buffers are the transient or fixed rest: the final norm's input
and output, the output layer's logits and cross-entropy (last stage), pipeline send/receive tensors,
Transformer Engine's FP8 copies of the transformer layers' linear weights (not of the embedding or the
output layer, which TE does not run), the optimizer's temporaries on the PyTorch-AdamW path (CPU), and on a
GPU a fixed runtime reserve (CUDA context, NCCL and cuBLAS workspaces).

FP8 primary weights (`precision.fp8_param_gather`, as NVIDIA's FP8 recipes run, with the distributed
optimizer): TE's linear weights are FP8 tensors, so DDP keeps them in a buffer of their own at 1 byte per
element (megatron-core's param_and_grad_buffer.py groups a Float8Tensor as torch.uint8) and TE keeps their FP8
transpose beside them (1 byte), instead of a 16-bit weight plus a cached FP8 weight and transpose. Their
gradients stay in the 16-bit dtype (or fp32), and the distributed optimizer still keeps fp32 main weights.
A layout fits when the total is at most 95% of device memory (the rest absorbs allocator fragmentation).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from dataclasses import dataclass

from megatron_llm.config.schema import Config, ModelConfig
from megatron_llm.config.validation import layout_problems
from megatron_llm.errors import UsageError
from megatron_llm.model.params import ParamTensor, StageParameters, stage_parameters, vocab_size_of
from megatron_llm.model.vocab import padded_vocab_size
from megatron_llm.planning.activations import ActivationShape, rank_activation_bytes
from megatron_llm.planning.buffers import buffer_layout, default_bucket_size
from megatron_llm.planning.gpus import GIB, GPU, custom_gpu, lookup_gpu
from megatron_llm.planning.layer_split import EVEN, PipelineSplit, layer_ranges, split_problem

RUNTIME_RESERVE = 2 * GIB
USABLE_FRACTION = 0.95
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4
ADAM_STATE = 8
STEP = 4
TE_LINEAR_WEIGHTS = ("linear_qkv.weight", "linear_proj.weight", "linear_fc1.weight", "linear_fc2.weight")
FP8_WEIGHT_COPY = 2  # TE's cached FP8 weight and its transpose, beside a 16-bit primary weight
FP8 = 1  # an FP8 primary weight, or its transpose
TE_CROSS_ENTROPY_STATS = 3  # fp32 max, sum of exponentials and target logit per token and TP rank


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on one rank at its peak; the rank is the most loaded pipeline stage unless asked for."""

    weights: int
    gradients: int
    optimizer: int
    activations: int
    buffers: int
    pipeline_rank: int = 0
    data_parallel_rank: int = 0
    num_microbatches: int = 1

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> int:
        return self.static + self.activations + self.buffers

    def fits(self, gpu: GPU) -> bool:
        return self.total <= usable_bytes(gpu)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "static": self.static, "total": self.total}


@dataclass(frozen=True)
class StaticMemory:
    weights: int
    gradients: int
    optimizer: int
    optimizer_elements: int


def with_vocab(config: Config, vocab_size: int | None) -> Config:
    """The config with the tokenizer's vocabulary size filled in (when it comes from a tokenizer)."""
    if vocab_size is None or vocab_size == config.model.vocab_size:
        return config
    return dataclasses.replace(config, model=dataclasses.replace(config.model, vocab_size=vocab_size))


def usable_bytes(gpu: GPU) -> int:
    return int(gpu.memory_bytes * USABLE_FRACTION)


def _uses_transformer_engine(config: Config, gpu: GPU | None) -> bool:
    return gpu is not None and config.model.transformer_impl != "local"


def fp8_primary_weights(config: Config, gpu: GPU | None) -> bool:
    """TE's linear weights are FP8 tensors: precision.fp8_param_gather with FP8, TE and the distributed optimizer
    (the only optimizer that updates them; validation refuses the option without it)."""
    pr = config.precision
    return (pr.fp8_param_gather and pr.fp8 is not None and _uses_transformer_engine(config, gpu)
            and config.parallel.distributed_optimizer)


def _is_te_linear(tensor: ParamTensor) -> bool:
    return tensor.name.endswith(TE_LINEAR_WEIGHTS)


def _dtype_groups(tensors: Iterable[ParamTensor], dtype_bytes: int, fp32_norms: bool,
                  fp8_weights: bool = False) -> dict[int, list]:
    """Parameters split by dtype as DDP splits its buffers (local-spec RMSNorm weights stay fp32; FP8 primary
    weights get a 1-byte buffer of their own)."""
    groups: dict[int, list] = {}
    for tensor in tensors:
        if fp8_weights and _is_te_linear(tensor):
            size = FP8
        elif fp32_norms and tensor.name.endswith("layernorm.weight"):
            size = FP32
        else:
            size = dtype_bytes
        groups.setdefault(size, []).append(tensor)
    return groups


def split_of(config: Config) -> PipelineSplit:
    """The config's pipeline split (parallel.account_for_embedding/_loss, first/last_stage_layers when the
    schema has them; megatron-core's even split otherwise)."""
    p = config.parallel
    return PipelineSplit(
        account_for_embedding=bool(getattr(p, "account_for_embedding", False)),
        account_for_loss=bool(getattr(p, "account_for_loss", False)),
        first_stage_layers=getattr(p, "first_stage_layers", None),
        last_stage_layers=getattr(p, "last_stage_layers", None),
    )


def static_memory(
    config: Config,
    world_size: int,
    pipeline_rank: int = 0,
    data_parallel_rank: int = 0,
    gpu: GPU | None = None,
    split: PipelineSplit | None = None,
    grad_bytes: int = FP32,
) -> StaticMemory:
    """Weights, gradient buffer and optimizer state of one rank, element for element."""
    p = config.parallel
    return _static_memory(
        _model_key(config.model),
        config.precision.dtype,
        p.tensor,
        p.pipeline,
        p.virtual_pipeline,
        data_parallel_size(config, world_size) * p.context,
        p.distributed_optimizer,
        p.overlap_grad_reduce,
        pipeline_rank,
        data_parallel_rank,
        _uses_transformer_engine(config, gpu),
        split if split is not None else split_of(config),
        grad_bytes,
        fp8_primary_weights(config, gpu),
    )


@functools.lru_cache(maxsize=4096)
def _static_memory(
    model_fields: tuple,
    dtype: str,
    tensor: int,
    pipeline: int,
    virtual: int | None,
    dp: int,
    distributed_optimizer: bool,
    overlap_grad_reduce: bool,
    pipeline_rank: int,
    data_parallel_rank: int,
    transformer_engine: bool,
    split: PipelineSplit = EVEN,
    grad_bytes: int = FP32,
    fp8_weights: bool = False,
) -> StaticMemory:
    dtype_bytes = DTYPE_BYTES[dtype]
    stage = _stages(model_fields, tensor, pipeline, virtual, split)[pipeline_rank]
    weights = gradients = optimizer = elements = 0
    for index, chunk in enumerate(stage.chunks):
        bucketing = overlap_grad_reduce and pipeline_rank == 0 and index == 0
        bucket_size = default_bucket_size(dp) if bucketing else None
        for size, tensors in _dtype_groups(chunk, dtype_bytes, not transformer_engine, fp8_weights).items():
            layout = buffer_layout(tensors, dp, distributed_optimizer, bucket_size)
            unpadded = sum(t.numel for t in tensors)
            weights += (layout.numel if distributed_optimizer else unpadded) * size
            gradients += layout.numel * (grad_bytes if size != FP32 else FP32)
            if distributed_optimizer:
                shard, count = layout.shard_numel(dp, data_parallel_rank)
            else:
                shard, count = unpadded, len(tensors)
            master = FP32 if size != FP32 else 0
            optimizer += shard * (ADAM_STATE + master) + count * STEP
            elements += shard
    return StaticMemory(weights, gradients, optimizer, elements)


_MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))


def _model_key(model: ModelConfig) -> tuple:
    """The model's fields as a hashable tuple (shallow: every field is a scalar)."""
    return tuple(getattr(model, name) for name in _MODEL_FIELDS)


@functools.lru_cache(maxsize=1024)
def _stages(
    model_fields: tuple, tensor: int, pipeline: int, virtual: int | None, split: PipelineSplit = EVEN
) -> list[StageParameters]:
    model = ModelConfig(*model_fields)
    ranges = layer_ranges(model.num_layers, pipeline, virtual, split) if split.uneven else None
    return stage_parameters(model, tensor, pipeline, virtual, ranges=ranges)


def stages_of(config: Config, split: PipelineSplit | None = None) -> list[StageParameters]:
    """What each pipeline rank of the config's layout holds, under its (or the given) split."""
    p = config.parallel
    return _stages(_model_key(config.model), p.tensor, p.pipeline, p.virtual_pipeline,
                   split if split is not None else split_of(config))


def data_parallel_size(config: Config, world_size: int) -> int:
    p = config.parallel
    return world_size // (p.tensor * p.pipeline * p.context)


def layout_problems_with_split(config: Config, world_size: int, split: PipelineSplit | None = None) -> list[str]:
    """The config's divisibility rules, with the layer split checked as megatron-core checks an uneven one."""
    split = split if split is not None else split_of(config)
    problems = layout_problems(config, world_size)
    if not split.uneven:
        return problems
    p = config.parallel
    problems = [problem for problem in problems if not problem.startswith("model.num_layers=")]
    issue = split_problem(config.model.num_layers, p.pipeline, p.virtual_pipeline, split)
    return ([issue] if issue else []) + problems


def check_layout(config: Config, world_size: int, split: PipelineSplit | None = None) -> None:
    """Raise a UsageError naming the first broken divisibility rule of the configured layout."""
    vocab_size_of(config.model)
    problems = layout_problems_with_split(config, world_size, split)
    if problems:
        raise UsageError(problems[0])


def te_linear_numel(stage: StageParameters) -> int:
    """Elements of the stage's weights that Transformer Engine runs in FP8: the four linear layers of each
    transformer layer. The embedding (VocabParallelEmbedding) and the output layer (megatron-core's own
    ColumnParallelLinear, gpt_model.py) are not TE modules and stay in the training dtype, as do the norms."""
    return sum(t.numel for chunk in stage.chunks for t in chunk if _is_te_linear(t))


def _buffers(config: Config, pipeline_rank: int, gpu: GPU | None, shape: ActivationShape,
             optimizer_elements: int, fp8_weight_elements: int) -> int:
    """Logits and cross-entropy (last stage), p2p tensors, FP8 weight copies, optimizer temporaries,
    runtime reserve.

    Cross-entropy on a GPU with Transformer Engine is TE's fused kernel (the builder's
    cross_entropy_fusion_impl="te"; megatron-core language_module.py calls te_parallel_cross_entropy):
    transformer_engine/pytorch/cross_entropy.py saves the logits in their own dtype, writes the gradient
    into them in place, and keeps only a max, a sum and the target logit per token in fp32 (gathered over
    TP). megatron-core's native vocab_parallel_cross_entropy (CPU, local spec) casts the logits to an fp32
    copy and hands back a 16-bit gradient beside it.

    FP8 weight copies: TE's Linear quantizes a 16-bit weight into a workspace cached across micro-batches
    (module/base.py get_weight_workspace with cache_name="weight"; megatron-core's TELinear passes
    is_first_microbatch unless disable_parameter_transpose_cache), holding the FP8 data and, on Hopper,
    which runs FP8 GEMMs only in the TN layout, its FP8 transpose for the backward pass: 2 bytes per element.
    With FP8 primary weights there is no such workspace; only the transpose (1 byte) is kept beside the weight.
    """
    m, p = config.model, config.parallel
    a = shape.bytes_per_element
    sp = p.tensor if p.sequence_parallel else 1
    total = 0
    if pipeline_rank == p.pipeline - 1:
        vocab = padded_vocab_size(vocab_size_of(m), m.make_vocab_size_divisible_by, p.tensor)
        # The final norm's input (saved for its backward) and its output (saved by the output layer for the
        # weight gradient): Megatron-LM's theoretical_memory_usage.py counts the latter as final_ln_output.
        total += 2 * a * shape.tokens * m.hidden_size // sp
        if m.fused_linear_cross_entropy:  # one vocabulary chunk at a time (megatron_llm.kernels)
            from megatron_llm.kernels.chunking import working_bytes

            total += working_bytes(shape.tokens, vocab // p.tensor, m.hidden_size, a, triton=gpu is not None)
        elif _uses_transformer_engine(config, gpu):
            total += shape.tokens * (vocab // p.tensor * a + (TE_CROSS_ENTROPY_STATS * p.tensor + 1) * FP32)
        else:
            total += shape.tokens * vocab // p.tensor * (2 * a + FP32)
    if p.pipeline > 1:
        total += 2 * shape.tokens * m.hidden_size // sp * a
    if gpu is None:
        total += optimizer_elements * FP32  # torch AdamW (foreach) builds one temporary per state tensor
    else:
        total += RUNTIME_RESERVE
        if fp8_primary_weights(config, gpu):
            total += FP8 * fp8_weight_elements
        elif config.precision.fp8 is not None and _uses_transformer_engine(config, gpu):
            total += FP8_WEIGHT_COPY * fp8_weight_elements
    return total


def rank_memory(
    config: Config,
    world_size: int,
    pipeline_rank: int,
    data_parallel_rank: int = 0,
    gpu: GPU | None = None,
    vocab_size: int | None = None,
    split: PipelineSplit | None = None,
    grad_bytes: int = FP32,
) -> MemoryEstimate:
    """Peak memory of one rank; `gpu` None means this engine on CPU (local spec, no flash attention)."""
    config = with_vocab(config, vocab_size)
    split = split if split is not None else split_of(config)
    check_layout(config, world_size, split)
    m, p, s = config.model, config.parallel, config.schedule
    dp = data_parallel_size(config, world_size)
    microbatches = s.global_batch_size // (s.micro_batch_size * dp)
    static = static_memory(config, world_size, pipeline_rank, data_parallel_rank, gpu, split, grad_bytes)
    shape = ActivationShape(
        seq_length=config.data.seq_length,
        micro_batch=s.micro_batch_size,
        tensor_parallel=p.tensor,
        context_parallel=p.context,
        sequence_parallel=p.sequence_parallel,
        recompute=m.recompute,
        recompute_num_layers=m.recompute_num_layers,
        recompute_method=m.recompute_method,
        bytes_per_element=DTYPE_BYTES[config.precision.dtype],
        flash_attention=_uses_transformer_engine(config, gpu),
        fp8_gemm_inputs=config.precision.fp8 is not None and _uses_transformer_engine(config, gpu),
    )
    stage = stages_of(config, split)[pipeline_rank]
    rank_layers = sum(end - start for start, end in stage.layers)
    activations = rank_activation_bytes(m, shape, p.pipeline, p.virtual_pipeline, pipeline_rank, microbatches,
                                        rank_layers)
    buffers = _buffers(config, pipeline_rank, gpu, shape, static.optimizer_elements, te_linear_numel(stage))
    return MemoryEstimate(
        weights=static.weights,
        gradients=static.gradients,
        optimizer=static.optimizer,
        activations=activations,
        buffers=buffers,
        pipeline_rank=pipeline_rank,
        data_parallel_rank=data_parallel_rank,
        num_microbatches=microbatches,
    )


def estimate_memory(
    config: Config,
    world_size: int,
    gpu: GPU | str | None = None,
    vocab_size: int | None = None,
    split: PipelineSplit | None = None,
    grad_bytes: int = FP32,
) -> MemoryEstimate:
    """Peak memory per rank of the configured layout: the most loaded pipeline stage, DP rank 0.

    Only the first and last stages can be the most loaded: middle stages hold no embedding or output
    layer and fewer in-flight micro-batches than the first. With explicit first/last stage layer counts
    the middle stages may hold more layers, so the first of them (the most in-flight) is checked too.

    `gpu` is a `GPU`, a name from the table (e.g. "h100"), or None for this engine on CPU;
    `vocab_size` the tokenizer's size when `model.vocab_size` is not set.
    """
    device = lookup_gpu(gpu) if isinstance(gpu, str) else gpu
    config = with_vocab(config, vocab_size)
    pipeline = config.parallel.pipeline
    explicit = (split if split is not None else split_of(config)).explicit
    candidates = {0, pipeline - 1} | ({1} if explicit and pipeline > 2 else set())
    ranks = [
        rank_memory(config, world_size, rank, 0, device, split=split, grad_bytes=grad_bytes)
        for rank in sorted(candidates)
    ]
    return max(ranks, key=lambda estimate: estimate.total)


def warn_if_not_fitting(
    config: Config, world_size: int, gpu_name_or_memory: str | int | None, vocab_size: int | None = None
) -> str | None:
    """A one-paragraph warning when the configured layout will not fit the device, else None.

    `gpu_name_or_memory`: a GPU name from the table, or the device's memory in bytes (for example
    `torch.cuda.get_device_properties(0).total_memory`); None (no GPU) returns None.
    """
    if gpu_name_or_memory is None:
        return None
    if isinstance(gpu_name_or_memory, str):
        gpu = lookup_gpu(gpu_name_or_memory)
    else:
        gpu = custom_gpu(int(gpu_name_or_memory))
    estimate = estimate_memory(config, world_size, gpu, vocab_size)
    if estimate.fits(gpu):
        return None
    gib = 1 / GIB
    device = f"--gpu {gpu.name}" if gpu.name != "custom" else f"--gpu-memory-gib {gpu.memory_bytes * gib:.0f}"
    return (
        f"warning: this layout needs about {estimate.total * gib:.1f} GiB per GPU on pipeline stage "
        f"{estimate.pipeline_rank} (weights {estimate.weights * gib:.1f}, gradients {estimate.gradients * gib:.1f}, "
        f"optimizer {estimate.optimizer * gib:.1f}, activations {estimate.activations * gib:.1f}, "
        f"buffers {estimate.buffers * gib:.1f}) but only {usable_bytes(gpu) * gib:.1f} GiB of the "
        f"{gpu.memory_bytes * gib:.1f} GiB {gpu.description} are usable; "
        f"`megatron-llm plan --config <this config> --gpus {world_size} {device} --explain` lists layouts that fit"
    )
