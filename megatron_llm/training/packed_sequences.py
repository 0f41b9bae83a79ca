"""Documents packed into one sequence, for Transformer Engine's THD attention: cumulative lengths instead of
a [seq, seq] mask (which TE's causal kernels would ignore)."""

from __future__ import annotations

import torch
from megatron.core.packed_seq_params import PackedSeqParams


def document_boundaries(position_ids: torch.Tensor) -> torch.Tensor:
    """Cumulative document lengths [0, l1, l1+l2, ..., seq] (int32) of one sequence whose position ids
    restart at 0 at every document (megatron-core's `reset_position_ids`)."""
    positions = position_ids.reshape(-1)
    starts = torch.nonzero(positions == 0).reshape(-1)
    if starts.numel() == 0 or int(starts[0]) != 0:
        starts = torch.cat([torch.zeros(1, dtype=starts.dtype, device=starts.device), starts])
    end = torch.tensor([positions.numel()], dtype=starts.dtype, device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def packed_seq_params(position_ids: torch.Tensor) -> PackedSeqParams:
    """THD parameters for a micro-batch of one packed sequence."""
    if position_ids.dim() == 2 and position_ids.shape[0] != 1:
        raise ValueError("packed (THD) sequences need schedule.micro_batch_size=1")
    cu = document_boundaries(position_ids)
    longest = int((cu[1:] - cu[:-1]).max())
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=longest,
                           max_seqlen_kv=longest)
