"""Assemble the plan: one JSON-able document that both `--json` and the text report are made from."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from megatron_llm.config.schema import Config
from megatron_llm.model.flops import flops_per_token
from megatron_llm.model.params import count_parameters
from megatron_llm.planning import calibration
from megatron_llm.planning.cost import TimingOptions, run_cost, training_precision
from megatron_llm.planning.gpus import GPU
from megatron_llm.planning.layer_split import PipelineSplit
from megatron_llm.planning.layouts import Candidate, evaluate, explain, search
from megatron_llm.planning.memory import USABLE_FRACTION, stages_of, usable_bytes

FLOPS_FORMULA = (
    "per token: 6 x N + 6 x layers x q x seq, where N = layers x (h(q + 2kv) + q h + 3 h ffn) + h V "
    "(every GEMM: forward, weight grad, input grad; 2 FLOPs per multiply-add) and the second term is "
    "QK^T and (QK^T)V halved for the causal mask (Megatron-LM's num_floating_point_operations)"
)


@dataclass(frozen=True)
class PlanRequest:
    config: Config
    config_path: str | None
    gpus: int
    gpu: GPU
    timing: TimingOptions
    tokens: int
    price_per_gpu_hour: float | None
    top: int = 10
    explain: bool = False


def _parameters(config: Config) -> dict:
    counts = count_parameters(config.model, config.parallel.tensor)
    return {**dataclasses.asdict(counts), "tensor_parallel_for_padding": config.parallel.tensor}


def _flops(config: Config, request: PlanRequest) -> dict:
    m, seq = config.model, config.data.seq_length
    per_token = flops_per_token(m, seq, config.parallel.tensor, recompute="none")
    tokens_per_step = config.schedule.global_batch_size * seq
    overhead = {
        mode: flops_per_token(m, seq, config.parallel.tensor, recompute=mode).recompute / per_token.model
        for mode in ("selective", "full")
    }
    return {
        "formula": FLOPS_FORMULA,
        "gemm_params": per_token.gemm_params,
        "per_token": {
            "dense": per_token.dense,
            "attention": per_token.attention,
            "logits": per_token.logits,
            "six_n": 6 * per_token.gemm_params,
            "total": per_token.model,
        },
        "recompute_overhead": overhead,
        "per_step": per_token.model * tokens_per_step,
        "run_total": float(per_token.model) * request.tokens,
        "dims": {
            "layers": m.num_layers,
            "hidden": m.hidden_size,
            "q": m.num_attention_heads * m.head_dim,
            "kv": m.query_groups * m.head_dim,
            "ffn": m.ffn_hidden_size,
            "seq_length": seq,
        },
    }


def _stages(layout_config: Config, split: PipelineSplit) -> list[dict]:
    return [
        {
            "pipeline_rank": stage.pipeline_rank,
            "layers": [list(r) for r in stage.layers],
            "has_embedding": stage.has_embedding,
            "has_output_layer": stage.has_output_layer,
            "tied_embedding_copy": stage.tied_embedding_copy,
            "params_per_tensor_rank": stage.numel,
        }
        for stage in stages_of(layout_config, split)
    ]


def _with_cost(candidate: Candidate, config: Config, request: PlanRequest) -> dict:
    entry = candidate.as_dict()
    if candidate.timing is not None:
        tokens_per_step = config.schedule.global_batch_size * config.data.seq_length
        cost = run_cost(candidate.timing, request.tokens, tokens_per_step, request.gpus, request.price_per_gpu_hour)
        entry["cost"] = cost.as_dict()
    return entry


def rejection_reasons(rejected: list[Candidate]) -> dict[str, int]:
    """How many layouts each kind of problem rejected: "memory" or the config field a rule names."""
    counts: dict[str, int] = {}
    for candidate in rejected:
        problem = candidate.problem or ""
        key = "memory" if candidate.memory is not None else re.split(r"[=\d(]", problem)[0].strip()
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def build_plan(request: PlanRequest) -> dict:
    """Everything `plan` reports, as plain data."""
    config, gpus = request.config, request.gpus
    precision = training_precision(config)
    candidates = search(config, gpus, request.gpu, request.timing)
    feasible = [c for c in candidates if c.fits]
    rejected = [c for c in candidates if not c.fits]
    configured = evaluate(config, gpus, request.gpu, request.timing)
    configured_entry = _with_cost(configured, config, request)
    if configured.timing is not None:
        configured_entry["stages"] = _stages(config, configured.layout.split)
    best = [_with_cost(c, config, request) for c in feasible[: request.top]]
    if feasible:
        best[0]["stages"] = _stages(feasible[0].layout.apply(config), feasible[0].layout.split)
        best[0]["parallel_fields"] = feasible[0].layout.parallel_fields()
    shown_rejected = []
    for candidate in rejected[: request.top]:
        entry = _with_cost(candidate, config, request)
        if request.explain:
            fix = explain(candidate, config, gpus, request.gpu, request.timing)
            entry["fix"] = {"change": fix[0], **_with_cost(fix[1], config, request)} if fix else None
        shown_rejected.append(entry)
    s = config.schedule
    return {
        "explain": request.explain,
        "inputs": {
            "config": request.config_path,
            "gpus": gpus,
            "gpus_per_node": request.gpu.gpus_per_node,
            "gpu": {
                "name": request.gpu.name,
                "description": request.gpu.description,
                "memory_bytes": request.gpu.memory_bytes,
                "usable_bytes": usable_bytes(request.gpu),
                "usable_fraction": USABLE_FRACTION,
                "peak_flops": request.gpu.peak_flops(precision),
                "hbm_gbps": request.gpu.hbm_gbps,
                "intra_node_gbps": request.gpu.intra_node_gbps,
                "network_gbps_per_node": request.gpu.network_gbps_per_node,
            },
            "precision": precision,
            "mfu": request.timing.mfu,
            "tp_comm_overlap": request.timing.tp_comm_overlap,
            "grad_reduce_bytes": request.timing.grad_reduce_bytes,
            "calibration": {
                "gemm_efficiency": dict(calibration.GEMM_EFFICIENCY),
                "attention_efficiency": calibration.ATTENTION_EFFICIENCY,
                "memory_efficiency": calibration.MEMORY_EFFICIENCY,
                "nvlink_efficiency": calibration.NVLINK_EFFICIENCY,
                "network_efficiency": calibration.NETWORK_EFFICIENCY,
                "overlap_efficiency": calibration.OVERLAP_EFFICIENCY,
            },
            "price_per_gpu_hour": request.price_per_gpu_hour,
            "tokens": request.tokens,
            "seq_length": config.data.seq_length,
            "global_batch_size": s.global_batch_size,
            "global_batch_tokens": s.global_batch_size * config.data.seq_length,
            "steps": math.ceil(request.tokens / (s.global_batch_size * config.data.seq_length)),
        },
        "parameters": _parameters(config),
        "flops": _flops(config, request),
        "configured_layout": configured_entry,
        "layouts": {
            "evaluated": len(candidates),
            "feasible": len(feasible),
            "rejected": len(rejected),
            "rejected_by": rejection_reasons(rejected),
            "best": best,
            "rejected_shown": shown_rejected,
        },
    }
