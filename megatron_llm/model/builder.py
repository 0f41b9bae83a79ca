"""Build a Llama-style megatron-core GPTModel (one chunk per virtual pipeline stage) from the config.

Layer spec: Transformer Engine's on a CUDA machine with TE installed (needed for FP8), megatron-core's
local spec otherwise. Initial weights do not depend on the parallel layout: weights are drawn whole on
the CPU and split (`use_cpu_initialization`), and each layer reseeds the generator from its global layer
number, so a layer gets the same weights whichever pipeline stage builds it.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.fp8_utils import get_fp8_context
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import TransformerLayer, get_transformer_layer_offset

from megatron_llm.config.schema import Config
from megatron_llm.model.fused_loss import FusedLossGPTModel
from megatron_llm.model.norms import RMSNorm
from megatron_llm.model.vocab import mask_padding_logits, padded_vocab_size
from megatron_llm.model.z_loss import ZLossGPTModel
from megatron_llm.runtime.hardware import Platform

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_FP8_RECIPES = {"delayed": "delayed", "current": "tensorwise"}


def use_transformer_engine(config: Config, platform: Platform) -> bool:
    impl = config.model.transformer_impl
    return impl == "transformer_engine" or (impl == "auto" and platform.has_transformer_engine)


def uses_te_rng_tracker(config: Config, platform: Platform) -> bool:
    """Transformer Engine's RNG tracker (CUDA-graph safe, needed by its FP8 layers): on a CUDA machine with TE."""
    return platform.has_cuda and use_transformer_engine(config, platform)


def transformer_config(config: Config, platform: Platform) -> TransformerConfig:
    """megatron-core's TransformerConfig for this model, layout and precision."""
    return TransformerConfig(**transformer_settings(config, platform))


def transformer_settings(config: Config, platform: Platform) -> dict:
    """The TransformerConfig fields, as a dict: comparable with a recipe without constructing the config
    (whose checks import Transformer Engine when a TE fusion is on)."""
    m, p, pr = config.model, config.parallel, config.precision
    on_gpu = platform.has_cuda
    te_gpu = on_gpu and use_transformer_engine(config, platform)
    dtype = _DTYPES[pr.dtype]
    recompute = {} if m.recompute == "none" else {"recompute_granularity": m.recompute}
    if m.recompute == "full":
        recompute.update(recompute_method=m.recompute_method, recompute_num_layers=m.recompute_num_layers)
    fp8 = {}
    if pr.fp8 is not None:
        fp8 = dict(
            fp8="hybrid",
            fp8_recipe=_FP8_RECIPES[pr.fp8],
            fp8_amax_history_len=pr.fp8_amax_history_len,
            fp8_amax_compute_algo=pr.fp8_amax_compute_algo,
            # FP8 primary weights: TE's linear layers are built as FP8 tensors (build_model_chunks enters
            # megatron-core's fp8_model_init context for it); DDP's fp8_param_gather goes with it.
            fp8_param=pr.fp8_param_gather,
        )
    return dict(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.query_groups,
        kv_channels=m.head_dim,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=m.add_qkv_bias,
        qk_layernorm=m.qk_norm,
        attention_dropout=m.attention_dropout,
        hidden_dropout=m.hidden_dropout,
        init_method_std=m.init_method_std,
        tensor_model_parallel_size=p.tensor,
        pipeline_model_parallel_size=p.pipeline,
        virtual_pipeline_model_parallel_size=p.virtual_pipeline if (p.virtual_pipeline or 1) > 1 else None,
        account_for_embedding_in_pipeline_split=p.account_for_embedding,
        account_for_loss_in_pipeline_split=p.account_for_loss,
        num_layers_in_first_pipeline_stage=p.first_stage_layers,
        num_layers_in_last_pipeline_stage=p.last_stage_layers,
        context_parallel_size=p.context,
        sequence_parallel=p.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=pr.dtype == "bf16",
        fp16=pr.dtype == "fp16",
        calculate_per_token_loss=True,
        use_cpu_initialization=not on_gpu,
        # Fusions go through torch.compile or apex on CPU; the bf16 cast of the fused cross-entropy
        # would also break fp32 equivalence across layouts. On a GPU with TE: the perf recipe's fusions.
        bias_activation_fusion=on_gpu,
        bias_dropout_fusion=on_gpu,
        masked_softmax_fusion=on_gpu,
        apply_rope_fusion=te_gpu,
        # Our fused linear cross-entropy, when on, replaces the output layer and the loss altogether.
        cross_entropy_loss_fusion=te_gpu and not m.fused_linear_cross_entropy,
        cross_entropy_fusion_impl="te" if te_gpu else "native",
        # TE's linear layers accumulate weight gradients into main_grad themselves; megatron-core's own
        # output layer needs apex's fused_weight_gradient_mlp_cuda for that, so both must be there.
        gradient_accumulation_fusion=te_gpu and platform.has_apex_wgrad_fusion,
        use_te_rng_tracker=uses_te_rng_tracker(config, platform),
        persist_layer_norm=False,
        attention_backend=AttnBackend.auto if use_transformer_engine(config, platform) else AttnBackend.local,
        # gloo pairs batched sends/receives wrongly when the previous and next stage are one process;
        # the interleaved schedule then needs overlapped p2p (the plain one does not support it).
        batch_p2p_comm=on_gpu,
        overlap_p2p_comm=not on_gpu and (p.virtual_pipeline or 1) > 1,
        # Freeing a sent activation's storage is safe on CUDA streams, but gloo's isend may still be
        # reading it: the memory is reused and the next stage receives garbage (seen with VPP on CPU).
        deallocate_pipeline_outputs=on_gpu,
        **recompute,
        **fp8,
    )


def _seeded_layer_class(seed: int) -> type:
    class SeededTransformerLayer(TransformerLayer):
        """Reseeds the CPU generator from the global layer number before drawing its weights."""

        def __init__(self, config, submodules, layer_number: int = 1, **kwargs: object) -> None:
            offset = get_transformer_layer_offset(config, kwargs.get("vp_stage"))
            torch.manual_seed(seed * 1009 + layer_number + offset)
            super().__init__(config, submodules, layer_number=layer_number, **kwargs)

    return SeededTransformerLayer


def _seeded_final_norm_class(seed: int, num_layers: int) -> type:
    class SeededFinalNorm(RMSNorm):
        """Reseeds the CPU generator before the final norm, so the output layer built right after it draws the
        same weights in every layout, also when its chunk builds no transformer layer (account_for_loss)."""

        def __init__(self, config, hidden_size: int, **kwargs: object) -> None:
            torch.manual_seed(seed * 1009 + num_layers + 1)
            super().__init__(config, hidden_size, **kwargs)

    return SeededFinalNorm


def layer_spec(config: Config, platform: Platform):
    if use_transformer_engine(config, platform):
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.model.qk_norm)
    spec = get_gpt_layer_local_spec(normalization="RMSNorm")
    submodules = dataclasses.replace(spec.submodules, input_layernorm=RMSNorm, pre_mlp_layernorm=RMSNorm)
    if config.model.qk_norm:
        attention = spec.submodules.self_attention
        attention = dataclasses.replace(attention, submodules=dataclasses.replace(
            attention.submodules, q_layernorm=RMSNorm, k_layernorm=RMSNorm))
        submodules = dataclasses.replace(submodules, self_attention=attention)
    return dataclasses.replace(spec, submodules=submodules)


def _block_spec(config: Config, platform: Platform, tconfig: TransformerConfig, vp_stage: int | None):
    spec = layer_spec(config, platform)
    norm = RMSNorm
    if not use_transformer_engine(config, platform):
        spec = dataclasses.replace(spec, module=_seeded_layer_class(config.schedule.seed))
        norm = _seeded_final_norm_class(config.schedule.seed, config.model.num_layers)
    if use_transformer_engine(config, platform):
        from megatron.core.extensions.transformer_engine import TENorm

        norm = TENorm
    layers = get_num_layers_to_build(tconfig, vp_stage=vp_stage)
    return TransformerBlockSubmodules(layer_specs=[spec] * layers, layer_norm=norm)


def build_model_chunks(config: Config, vocab_size: int, platform: Platform) -> list[GPTModel]:
    """The model chunks this rank holds (one per virtual pipeline stage), not yet wrapped in DDP."""
    tconfig = transformer_config(config, platform)
    m = config.model
    vpp = tconfig.virtual_pipeline_model_parallel_size
    stages = range(vpp) if vpp else [None]
    padded = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, config.parallel.tensor)
    chunks = []
    torch.manual_seed(config.schedule.seed)
    z_loss = config.optim.z_loss
    if m.fused_linear_cross_entropy:
        model_class, extra = FusedLossGPTModel, {"real_vocab_size": vocab_size, "z_loss": z_loss}
    elif z_loss:
        model_class, extra = ZLossGPTModel, {"z_loss": z_loss}
    else:
        model_class, extra = GPTModel, {}
    for vp_stage in stages:
        pre = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        post = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        # With tconfig.fp8_param, TE's fp8_model_init (with the FP8 recipe, keeping the high-precision initial
        # values for the optimizer's fp32 main weights), as Megatron-LM builds the model; otherwise a no-op.
        with get_fp8_context(tconfig, is_init=True):
            model = model_class(
                config=tconfig,
                transformer_layer_spec=_block_spec(config, platform, tconfig, vp_stage),
                vocab_size=padded,
                max_sequence_length=m.max_position_embeddings,
                pre_process=pre,
                post_process=post,
                share_embeddings_and_output_weights=m.tie_embeddings,
                position_embedding_type="rope",
                rotary_base=int(m.rotary_base),
                rope_scaling=m.rope_scaling == "llama3",
                rope_scaling_factor=m.rope_scaling_factor,
                vp_stage=vp_stage,
                **extra,
            )
        if post:
            mask_padding_logits(model.output_layer, vocab_size, padded)
        if platform.has_cuda:
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    return chunks
