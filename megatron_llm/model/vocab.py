"""Vocabulary padding, as megatron-core/Megatron-LM do it (a multiple of divisible_by x TP), and the mask that
keeps the padding out of every softmax.

Megatron-LM leaves the padding rows' logits in the cross-entropy, so the loss depends on the padded size,
which depends on TP: a 32,000-token vocabulary is padded to 32,000 rows at TP=1 and 32,768 at TP=8, and the
two runs differ from the first step (the loss at initialisation is ln 32,768 rather than ln 32,000). Here the
padding logits are set to PADDING_LOGIT on the way out of the output layer: they carry no probability and
receive no gradient, the loss is over the real vocabulary on every layout, and it is the loss the exported
Hugging Face model (which has no padding rows) computes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the planner imports this module and must not import torch
    import torch

PADDING_LOGIT = -1.0e4  # finite, so that 0 x log p stays 0; exp(-1e4 - max) underflows to exactly 0


def padded_vocab_size(vocab_size: int, make_divisible_by: int, tensor_parallel: int) -> int:
    multiple = make_divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple


def mask_padding_logits(output_layer: torch.nn.Module, vocab_size: int, padded: int) -> None:
    """Register the mask on a (column-parallel) output layer whose logits cover `padded` entries."""
    if padded == vocab_size:
        return
    import torch

    def hook(module: torch.nn.Module, args: tuple, output: tuple) -> tuple:
        logits, bias = output
        local = logits.shape[-1]
        start = 0
        if local != padded:  # this rank's vocabulary shard
            from megatron.core import parallel_state

            start = parallel_state.get_tensor_model_parallel_rank() * local
        if start + local <= vocab_size:
            return output
        padding = torch.arange(start, start + local, device=logits.device) >= vocab_size
        return logits.masked_fill(padding, PADDING_LOGIT), bias

    output_layer.register_forward_hook(hook)
