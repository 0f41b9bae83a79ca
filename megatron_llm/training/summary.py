"""What rank 0 shows a person at the start of a run: the model, its size and the parallel layout."""

from __future__ import annotations

import torch
from megatron.core import parallel_state

from megatron_llm.config.schema import Config
from megatron_llm.model.vocab import padded_vocab_size


def _rank_parameter_counts(model: list) -> list[int]:
    """Parameters held by every rank (world all-gather of a single number)."""
    local = sum(p.numel() for chunk in model for p in chunk.parameters())
    counts = [torch.zeros(1, dtype=torch.int64) for _ in range(torch.distributed.get_world_size())]
    mine = torch.tensor([local], dtype=torch.int64)
    if torch.cuda.is_available():
        counts = [c.cuda() for c in counts]
        mine = mine.cuda()
    torch.distributed.all_gather(counts, mine)
    return [int(c.item()) for c in counts]


def describe_model(config: Config, model: list, vocab_size: int) -> str:
    """Model size, parallel layout and per-rank parameter counts; must be called on every rank."""
    m, p = config.model, config.parallel
    per_rank = _rank_parameter_counts(model)
    dp = parallel_state.get_data_parallel_world_size()
    replica = sum(per_rank[: p.tensor * p.pipeline * p.context]) // p.context
    padded = padded_vocab_size(vocab_size, m.make_vocab_size_divisible_by, p.tensor)
    lines = [
        f"model: {m.num_layers} layers, hidden {m.hidden_size}, ffn {m.ffn_hidden_size}, "
        f"{m.num_attention_heads} heads / {m.query_groups} query groups, vocab {vocab_size} (padded to {padded}), "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings",
        f"parameters: {replica:,} per model replica (incl. {padded - vocab_size} padding rows per embedding)",
        f"layout: TP={p.tensor} PP={p.pipeline} VPP={p.virtual_pipeline or 1} CP={p.context} DP={dp} "
        f"SP={'on' if p.sequence_parallel else 'off'} "
        f"distributed optimizer={'on' if p.distributed_optimizer else 'off'}"
        f" precision={config.precision.dtype}{'+fp8-' + config.precision.fp8 if config.precision.fp8 else ''}",
        "parameters per rank: " + ", ".join(f"r{rank}={count:,}" for rank, count in enumerate(per_rank)),
    ]
    return "\n".join(lines)
