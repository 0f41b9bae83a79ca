"""Checks that run before any worker starts: every problem on its own line, naming the field."""

from __future__ import annotations

from megatron_llm.config.schema import Config
from megatron_llm.errors import UsageError
from megatron_llm.runtime.platform import Platform

DTYPES = ("fp32", "bf16", "fp16")
FP8_RECIPES = ("delayed", "current")
RECOMPUTE = ("none", "selective", "full")
IMPLS = ("auto", "local", "transformer_engine")
DECAY_STYLES = ("cosine", "linear", "constant", "inverse-square-root", "WSD")


def layout_problems(config: Config, world_size: int) -> list[str]:
    """Divisibility rules of the parallel layout (also used by `plan` and `slurm submit`)."""
    m, p, s = config.model, config.parallel, config.schedule
    problems = []
    for name in ("tensor", "pipeline", "context"):
        if getattr(p, name) < 1:
            problems.append(f"parallel.{name} must be >= 1, got {getattr(p, name)}")
    if problems:
        return problems
    if m.num_attention_heads % p.tensor:
        problems.append(
            f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tensor={p.tensor}"
        )
    if m.query_groups % p.tensor and p.tensor % m.query_groups:
        # With fewer groups than TP ranks megatron-core replicates each key/value head on TP / groups ranks.
        problems.append(
            f"model.num_query_groups={m.query_groups} and parallel.tensor={p.tensor}: one must divide the other"
        )
    if m.num_attention_heads % m.query_groups:
        problems.append(
            f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
            f"model.num_query_groups={m.query_groups}"
        )
    stages = p.pipeline * (p.virtual_pipeline or 1)
    if m.num_layers % stages:
        problems.append(
            f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline x parallel.virtual_pipeline"
            f" = {p.pipeline} x {p.virtual_pipeline or 1}"
        )
    if p.virtual_pipeline is not None and p.virtual_pipeline > 1 and p.pipeline < 2:
        problems.append("parallel.virtual_pipeline needs parallel.pipeline >= 2")
    model_parallel = p.tensor * p.pipeline * p.context
    if world_size % model_parallel:
        problems.append(
            f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline x parallel.context"
            f" = {p.tensor} x {p.pipeline} x {p.context}"
        )
        return problems
    dp = world_size // model_parallel
    if s.micro_batch_size < 1 or s.global_batch_size % (s.micro_batch_size * dp):
        problems.append(
            f"schedule.global_batch_size={s.global_batch_size} is not divisible by "
            f"schedule.micro_batch_size x data-parallel size = {s.micro_batch_size} x {dp}"
        )
    microbatches = s.global_batch_size // (s.micro_batch_size * dp) if s.micro_batch_size >= 1 else 0
    if (p.virtual_pipeline or 1) > 1 and microbatches % p.pipeline:
        problems.append(
            f"the interleaved schedule needs the number of micro-batches ({microbatches} = global batch / "
            f"(micro batch x DP)) to be a multiple of parallel.pipeline={p.pipeline}"
        )
    if m.ffn_hidden_size % p.tensor:
        problems.append(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tensor={p.tensor}")
    if p.context > 1 and config.data.seq_length % (2 * p.context):
        problems.append(
            f"data.seq_length={config.data.seq_length} is not divisible by 2 x parallel.context={2 * p.context}"
        )
    if p.sequence_parallel and p.tensor == 1:
        problems.append("parallel.sequence_parallel needs parallel.tensor > 1")
    if p.sequence_parallel and config.data.seq_length % p.tensor:
        problems.append(f"data.seq_length={config.data.seq_length} is not divisible by parallel.tensor={p.tensor}")
    return problems


def config_problems(config: Config) -> list[str]:
    """Values that are wrong whatever the machine."""
    m, pr, o, s, d = config.model, config.precision, config.optim, config.schedule, config.data
    problems = []
    if m.hidden_size % m.num_attention_heads and m.kv_channels is None:
        problems.append(
            f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
            f"{m.num_attention_heads}; set model.kv_channels"
        )
    if d.seq_length > m.max_position_embeddings:
        problems.append(
            f"data.seq_length={d.seq_length} exceeds model.max_position_embeddings={m.max_position_embeddings}"
        )
    if pr.dtype not in DTYPES:
        problems.append(f"precision.dtype must be one of {', '.join(DTYPES)}, got {pr.dtype!r}")
    if pr.fp8 is not None and pr.fp8 not in FP8_RECIPES:
        problems.append(f"precision.fp8 must be one of {', '.join(FP8_RECIPES)} or null, got {pr.fp8!r}")
    if m.recompute not in RECOMPUTE:
        problems.append(f"model.recompute must be one of {', '.join(RECOMPUTE)}, got {m.recompute!r}")
    if m.transformer_impl not in IMPLS:
        problems.append(f"model.transformer_impl must be one of {', '.join(IMPLS)}, got {m.transformer_impl!r}")
    if m.rope_scaling not in (None, "llama3"):
        problems.append(f"model.rope_scaling must be null or 'llama3', got {m.rope_scaling!r}")
    if o.decay_style not in DECAY_STYLES:
        problems.append(f"optim.decay_style must be one of {', '.join(DECAY_STYLES)}, got {o.decay_style!r}")
    if s.train_iters is None and s.train_tokens is None:
        problems.append("schedule.train_iters or schedule.train_tokens must be set")
    decay_iters = o.lr_decay_iters or s.train_iters
    if decay_iters is not None and o.warmup_iters >= decay_iters:
        problems.append(
            f"optim.warmup_iters={o.warmup_iters} must be smaller than the decay length "
            f"(optim.lr_decay_iters or schedule.train_iters = {decay_iters})"
        )
    if m.vocab_size is None and d.tokenizer is None:
        problems.append("model.vocab_size must be set when data.tokenizer is not")
    if not d.paths and not d.synthetic:
        problems.append("data.paths is empty: give token shards or set data.synthetic: true")
    if d.paths and len(d.paths) > 1 and len(d.paths) % 2:
        problems.append("data.paths blend must alternate weight, prefix: [0.7, prefixA, 0.3, prefixB]")
    return problems


def platform_problems(config: Config, platform: Platform) -> list[str]:
    """GPU-only options asked for on a machine that cannot run them."""
    problems = []
    pr, m = config.precision, config.model
    if pr.fp8 is not None:
        if not platform.has_transformer_engine:
            problems.append(
                f"precision.fp8={pr.fp8!r} needs Transformer Engine and a CUDA GPU "
                "(pip install 'megatron-llm[gpu]' on a Hopper machine)"
            )
        elif not platform.is_hopper_or_newer:
            problems.append(
                f"precision.fp8={pr.fp8!r} needs a Hopper (sm_90) or newer GPU, found {platform.gpu_name}"
            )
    if m.transformer_impl == "transformer_engine" and not platform.has_transformer_engine:
        problems.append("model.transformer_impl='transformer_engine' needs Transformer Engine and a CUDA GPU")
    if config.parallel.context > 1 and not platform.has_transformer_engine:
        problems.append("parallel.context > 1 needs Transformer Engine attention (a CUDA GPU)")
    if pr.dtype == "fp16" and not platform.has_cuda:
        problems.append("precision.dtype='fp16' needs a CUDA GPU (use fp32 or bf16 on CPU)")
    return problems


def validate(config: Config, world_size: int, platform: Platform) -> None:
    """Raise one UsageError listing every problem, one per line."""
    problems = config_problems(config) + layout_problems(config, world_size) + platform_problems(config, platform)
    if problems:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(problems))
