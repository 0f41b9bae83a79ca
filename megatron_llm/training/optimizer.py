"""Wrap model chunks in megatron-core DDP and build its optimizer (AdamW, optional ZeRO-1) and LR schedule."""

from __future__ import annotations

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import MegatronOptimizer, OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer import TransformerConfig

from megatron_llm.config.schema import Config
from megatron_llm.model.builder import use_transformer_engine
from megatron_llm.runtime.hardware import Platform, detect_platform


def _te_gpu(config: Config, platform: Platform) -> bool:
    return platform.has_cuda and use_transformer_engine(config, platform)


def ddp_settings(config: Config, platform: Platform) -> dict:
    """megatron-core's DistributedDataParallelConfig fields, as a dict (compared with the H100 recipe in a test).

    Gradients are reduced in FP32 unless `precision.grad_reduce_in_fp32` says otherwise; its default (null)
    keeps FP32 on CPU and reduces in the training dtype on a CUDA machine with Transformer Engine, as the
    H100 recipe does. Parameter all-gather overlaps the next forward pass with the distributed optimizer on
    such a machine unless `parallel.overlap_param_gather` is false (its default, null, is off on CPU).
    `precision.fp8_param_gather` (with FP8 on) all-gathers the FP8 primary weights as they are, one byte each.
    """
    p, pr = config.parallel, config.precision
    te_gpu = _te_gpu(config, platform)
    fp32_reduce = pr.grad_reduce_in_fp32 if pr.grad_reduce_in_fp32 is not None else not te_gpu
    gather = p.overlap_param_gather if p.overlap_param_gather is not None else te_gpu
    return dict(
        grad_reduce_in_fp32=pr.dtype != "fp32" and fp32_reduce,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=gather and p.distributed_optimizer,
        use_distributed_optimizer=p.distributed_optimizer,
        check_for_nan_in_grad=False,
        bucket_size=None,
        fp8_param_gather=pr.fp8 is not None and pr.fp8_param_gather,
    )


def optimizer_settings(config: Config, platform: Platform) -> dict:
    """megatron-core's OptimizerConfig fields, as a dict (compared with the H100 recipe in a test).

    The first bucket's all-gather is never overlapped with the optimizer step
    (`overlap_param_gather_with_optimizer_step`): megatron-core supports it only with interleaved pipelines,
    and Megatron-LM refuses it with distributed checkpoints, the only kind this engine writes.
    """
    o, pr = config.optim, config.precision
    return dict(
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
        use_distributed_optimizer=config.parallel.distributed_optimizer,
        overlap_param_gather=ddp_settings(config, platform)["overlap_param_gather"],
        overlap_param_gather_with_optimizer_step=False,
    )


def wrap_ddp(chunks: list, tconfig: TransformerConfig, config: Config,
             platform: Platform | None = None) -> list[DistributedDataParallel]:
    ddp_config = DistributedDataParallelConfig(**ddp_settings(config, platform or detect_platform()))
    # Only the first chunk buckets its parameters, as Megatron-LM does with virtual pipeline stages.
    return [
        DistributedDataParallel(tconfig, ddp_config, module=chunk, disable_bucketing=index > 0)
        for index, chunk in enumerate(chunks)
    ]


def build_optimizer(model: list[DistributedDataParallel], config: Config,
                    platform: Platform | None = None) -> MegatronOptimizer:
    settings = optimizer_settings(config, platform or detect_platform())
    opt_config = OptimizerConfig(params_dtype=model[0].module.config.params_dtype, **settings)
    return get_megatron_optimizer(opt_config, model)


MEGATRON_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant",
                      "inverse_sqrt": "inverse-square-root", "wsd": "WSD"}
MEGATRON_WSD_DECAYS = {"linear": "linear", "cosine": "cosine", "1-sqrt": "minus_sqrt", "exponential": "exponential"}


def wsd_decay_iters(config: Config, train_iters: int) -> int:
    """Steps of the wsd schedule's final decay."""
    o = config.optim
    if o.wsd.decay_iters is not None:
        return o.wsd.decay_iters
    return max(1, round((o.lr_decay_iters or train_iters) * o.wsd.decay_fraction))


def build_scheduler(optimizer: MegatronOptimizer, config: Config, train_iters: int) -> OptimizerParamScheduler:
    if config.schedule.stages:
        from megatron_llm.training.staged_run import StagedScheduler, stage_starts

        stages, starts, total = stage_starts(config, train_iters)
        return StagedScheduler(optimizer, config, stages, starts, total)
    return single_schedule(optimizer, config, train_iters)


def single_schedule(optimizer: MegatronOptimizer, config: Config, train_iters: int) -> OptimizerParamScheduler:
    """Warmup then `optim.lr_schedule`, counted in samples like Megatron-LM (so batch-size changes stay sane).

    The config is the truth on resume (megatron-core's `override_opt_param_scheduler`): only the position
    comes from the checkpoint, so a run extended by a larger `schedule.train_iters` decays at its new end (a
    wsd run stays in its stable phase until then).
    """
    o, gbs = config.optim, config.schedule.global_batch_size
    decay_iters = o.lr_decay_iters or train_iters
    wsd = o.lr_schedule == "wsd"
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0,
        max_lr=o.lr,
        min_lr=o.min_lr,
        lr_warmup_steps=o.warmup_iters * gbs,
        lr_decay_steps=decay_iters * gbs,
        lr_decay_style=MEGATRON_SCHEDULES[o.lr_schedule],
        start_wd=o.weight_decay,
        end_wd=o.weight_decay,
        wd_incr_steps=decay_iters * gbs,
        wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=False,
        override_opt_param_scheduler=True,
        wsd_decay_steps=wsd_decay_iters(config, train_iters) * gbs if wsd else None,
        lr_wsd_decay_style=MEGATRON_WSD_DECAYS[o.wsd.decay_style] if wsd else None,
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
