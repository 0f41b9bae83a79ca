"""Checks that run before any worker starts: every problem on its own line, naming the field."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING

from megatron_llm.config.fields import choice_fields, describe_type, literal_choices, value_fits
from megatron_llm.config.schema import Config, ModelConfig, PrecisionConfig
from megatron_llm.config.stage_specs import parse_stages
from megatron_llm.errors import UsageError
from megatron_llm.runtime.hardware import Platform

if TYPE_CHECKING:
    from megatron_llm.planning.layer_split import PipelineSplit

# Read from the schema's Literal annotations (other commands check these two without a full validation).
DTYPES: tuple[str, ...] = literal_choices(typing.get_type_hints(PrecisionConfig)["dtype"])
RECOMPUTE: tuple[str, ...] = literal_choices(typing.get_type_hints(ModelConfig)["recompute"])


def choice_problems(config: Config) -> list[str]:
    """Every `Literal` field whose value is not one of its allowed values (set in code, not through YAML)."""
    return [
        f"{key} must be {describe_type(annotation)}, got {value!r}"
        for key, annotation, value in choice_fields(config)
        if not value_fits(annotation, value)
    ]


def pipeline_split(config: Config) -> PipelineSplit:
    """The config's layer split over pipeline stages (all fields unset: megatron-core's even split)."""
    from megatron_llm.planning.layer_split import PipelineSplit  # planning imports this module: import when called

    p = config.parallel
    return PipelineSplit(account_for_embedding=p.account_for_embedding, account_for_loss=p.account_for_loss,
                         first_stage_layers=p.first_stage_layers, last_stage_layers=p.last_stage_layers)


def split_problems(config: Config) -> list[str]:
    """megatron-core's rules for splitting the layers over pipeline (and virtual pipeline) stages.

    The decision is `planning.layer_split.split_problem`, the same function the planner uses; every message starts
    with `model.num_layers=` (the planner replaces these when it tries other splits)."""
    m, p = config.model, config.parallel
    split = pipeline_split(config)
    if not split.uneven:
        stages = p.pipeline * (p.virtual_pipeline or 1)
        if m.num_layers % stages:
            return [f"model.num_layers={m.num_layers} is not divisible by parallel.pipeline x "
                    f"parallel.virtual_pipeline = {p.pipeline} x {p.virtual_pipeline or 1}"]
        return []
    from megatron_llm.planning.layer_split import split_problem

    issue = split_problem(m.num_layers, p.pipeline, p.virtual_pipeline, split)
    if issue is None:
        return []
    fields = [f"parallel.{name}=true" for name in ("account_for_embedding", "account_for_loss") if getattr(p, name)]
    fields += [f"parallel.{name}={getattr(p, name)}" for name in ("first_stage_layers", "last_stage_layers")
               if getattr(p, name) is not None]
    return [f"model.num_layers={m.num_layers} does not split over parallel.pipeline={p.pipeline}, "
            f"parallel.virtual_pipeline={p.virtual_pipeline or 1} with {', '.join(fields)}: {issue}"]


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
    problems += split_problems(config)
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


def config_problems(config: Config, reads_data_paths: bool = True) -> list[str]:
    """Values that are wrong whatever the machine; `reads_data_paths=False` for tasks that bring their own
    data (SFT, DPO), which never read `data.paths`."""
    m, o, s, d = config.model, config.optim, config.schedule, config.data
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
    problems += choice_problems(config)
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
    if s.manual_gc_interval is not None and s.manual_gc_interval < 1:
        problems.append(f"schedule.manual_gc_interval={s.manual_gc_interval} must be >= 1 (or null: automatic GC)")
    if not o.z_loss >= 0:
        problems.append(f"optim.z_loss={o.z_loss} must be >= 0")
    problems += fp8_param_problems(config)
    try:
        parse_stages(config)
    except UsageError as error:
        problems.append(str(error))
    if reads_data_paths and not d.paths and not d.synthetic and not s.stages:
        problems.append("data.paths is empty: give token shards or set data.synthetic: true")
    if d.paths and len(d.paths) > 1 and len(d.paths) % 2:
        problems.append("data.paths blend must alternate weight, prefix: [0.7, prefixA, 0.3, prefixB]")
    return problems


def fp8_param_problems(config: Config) -> list[str]:
    """precision.fp8_param_gather's rules, whatever the machine (megatron-core's and Megatron-LM's own)."""
    pr = config.precision
    if not pr.fp8_param_gather:
        return []
    problems = []
    if pr.fp8 is None:
        # megatron-core's TransformerConfig: "fp8_param must be used together with fp8 mode".
        problems.append("precision.fp8_param_gather needs precision.fp8 (delayed or current): the FP8 weights "
                        "follow its scaling recipe (set precision.fp8_param_gather=false to train without FP8)")
    if not config.parallel.distributed_optimizer:
        # Megatron-LM refuses --fp8-param-gather without it: only the distributed optimizer writes its fp32 main
        # weights back into FP8 weights (quantize_param_shard); any other would leave them unchanged.
        problems.append("precision.fp8_param_gather needs parallel.distributed_optimizer=true: only megatron-core's "
                        "distributed optimizer updates FP8 primary weights from its fp32 main weights")
    return problems


def ramp_problems(config: Config, world_size: int) -> list[str]:
    """schedule.batch_ramp: every batch size on the way is whole micro-batches on every data-parallel rank."""
    s, p = config.schedule, config.parallel
    ramp = s.batch_ramp
    if ramp is None:
        return []
    problems = []
    if not 0 < ramp.start <= s.global_batch_size:
        problems.append(f"schedule.batch_ramp.start={ramp.start} must be in 1..schedule.global_batch_size"
                        f"={s.global_batch_size}")
    elif ramp.increment < 1 or (s.global_batch_size - ramp.start) % ramp.increment:
        problems.append(f"schedule.batch_ramp.increment={ramp.increment} must be >= 1 and divide "
                        f"schedule.global_batch_size - start = {s.global_batch_size - ramp.start}")
    if ramp.samples < 0:
        problems.append(f"schedule.batch_ramp.samples={ramp.samples} must be >= 0")
    data_parallel = world_size // max(p.tensor * p.pipeline * p.context, 1)
    per_pass = s.micro_batch_size * max(data_parallel, 1)
    for name in ("start", "increment"):
        if getattr(ramp, name) % per_pass:
            problems.append(f"schedule.batch_ramp.{name}={getattr(ramp, name)} must be a multiple of "
                            f"micro_batch_size x data-parallel size = {per_pass}")
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
    if pr.fp8_param_gather:
        if not platform.has_transformer_engine:
            problems.append("precision.fp8_param_gather needs Transformer Engine and a CUDA GPU (its FP8 weights "
                            "are TE tensors; pip install 'megatron-llm[gpu]' on a Hopper machine)")
        elif m.transformer_impl == "local":
            problems.append("precision.fp8_param_gather needs Transformer Engine's layers, not "
                            "model.transformer_impl='local' (only TE's linear layers hold FP8 weights)")
    if m.transformer_impl == "transformer_engine" and not platform.has_transformer_engine:
        problems.append("model.transformer_impl='transformer_engine' needs Transformer Engine and a CUDA GPU")
    if config.parallel.context > 1 and not platform.has_transformer_engine:
        problems.append("parallel.context > 1 needs Transformer Engine attention (a CUDA GPU)")
    te = m.transformer_impl == "transformer_engine" or (
        m.transformer_impl == "auto" and platform.has_transformer_engine)
    if config.data.document_mask and te and config.schedule.micro_batch_size != 1:
        problems.append("data.document_mask with Transformer Engine packs documents as THD sequences: set "
                        f"schedule.micro_batch_size=1 (got {config.schedule.micro_batch_size})")
    if pr.dtype == "fp16" and not platform.has_cuda:
        problems.append("precision.dtype='fp16' needs a CUDA GPU (use fp32 or bf16 on CPU)")
    return problems


def validate(config: Config, world_size: int, platform: Platform, reads_data_paths: bool = True) -> None:
    """Raise one UsageError listing every problem, one per line."""
    problems = (config_problems(config, reads_data_paths) + layout_problems(config, world_size)
                + ramp_problems(config, world_size) + platform_problems(config, platform))
    if problems:
        raise UsageError("invalid configuration:\n  " + "\n  ".join(problems))
