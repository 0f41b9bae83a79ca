"""Wrap model chunks in megatron-core DDP and build its optimizer (AdamW, optional ZeRO-1) and LR schedule."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer import TransformerConfig

from megatron_llm.config.schema import Config


def wrap_ddp(chunks: list, tconfig: TransformerConfig, config: Config) -> list[DistributedDataParallel]:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=config.precision.dtype != "fp32",
        overlap_grad_reduce=config.parallel.overlap_grad_reduce,
        overlap_param_gather=config.parallel.overlap_param_gather and config.parallel.distributed_optimizer,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=None,
    )
    # Only the first chunk buckets its parameters, as Megatron-LM does with virtual pipeline stages.
    return [
        DistributedDataParallel(tconfig, ddp_config, module=chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def build_optimizer(model: list[DistributedDataParallel], config: Config) -> MegatronOptimizer:
    o, pr = config.optim, config.precision
    opt_config = OptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=pr.dtype == "bf16",
        fp16=pr.dtype == "fp16",
        params_dtype=model[0].module.config.params_dtype,
        use_distributed_optimizer=config.parallel.distributed_optimizer,
    )
    return get_megatron_optimizer(opt_config, model)


def build_scheduler(optimizer: MegatronOptimizer, config: Config, train_iters: int) -> OptimizerParamScheduler:
    """Warmup then decay to min_lr, counted in samples like Megatron-LM (so batch-size changes stay sane)."""
    o, gbs = config.optim, config.schedule.global_batch_size
    decay_iters = o.lr_decay_iters or train_iters
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_iters * gbs,
        lr_decay_steps=decay_iters * gbs,
        lr_decay_style=o.decay_style,
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters * gbs,
        wd_incr_style="constant",
        wsd_decay_steps=(decay_iters * gbs) // 10 if o.decay_style == "WSD" else None,
        lr_wsd_decay_style="linear" if o.decay_style == "WSD" else None,
    )


def attach_schedule_hooks(tconfig: TransformerConfig, model: list, optimizer: MegatronOptimizer) -> None:
    """The callbacks megatron-core's pipeline schedules call: no-sync, grad sync, finalize, loss scale."""
    no_sync = [m.no_sync for m in model]
    tconfig.no_sync_func = no_sync if len(no_sync) > 1 else no_sync[0]
    if model[0].ddp_config.overlap_grad_reduce:
        sync = [m.start_grad_sync for m in model]
        tconfig.grad_sync_func = sync if len(sync) > 1 else sync[0]
    if model[0].ddp_config.overlap_param_gather:
        gather = [m.start_param_sync for m in model]
        tconfig.param_sync_func = gather if len(gather) > 1 else gather[0]
    tconfig.finalize_model_grads_func = finalize_model_grads
    tconfig.grad_scale_func = optimizer.scale_loss
