"""An RMSNorm for megatron-core's local spec that also works with sequence parallelism.

megatron-core's `WrappedTorchNorm` refuses sequence parallelism. Under SP each TP rank normalises its
own slice of the sequence, so the norm's weight gradient is partial: tagging the weight with
`sequence_parallel=True` makes megatron-core's `finalize_model_grads` all-reduce it across the TP group.
"""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.RMSNorm):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **kwargs: object) -> None:
        super().__init__(normalized_shape=hidden_size, eps=eps)
        self.weight.sequence_parallel = bool(config.sequence_parallel)
