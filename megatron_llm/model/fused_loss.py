"""GPTModel whose training loss runs through the fused linear cross-entropy (`model.fused_linear_cross_entropy`).

megatron-core's GPTModel makes the whole logits tensor ([sequence, batch, vocabulary / TP]) with its output
layer and then the cross-entropy makes an FP32 copy of it. With labels, this model instead hands the hidden
states and the output weight (the shared embedding when tied) to `megatron_llm.kernels`, which walks the
vocabulary shard in chunks. Without labels (evaluation, generation), or with multi-token prediction, it is
megatron-core's path unchanged.

The hidden states enter tensor parallelism the way ColumnParallelLinear's input does: all-gathered over the
sequence under sequence parallelism (gradient reduce-scattered), otherwise copied (gradient all-reduced).
The vocabulary padding is excluded by index, which equals the -1e4 logits `mask_padding_logits` gives the
plain path: their exp underflows to exactly 0 either way.
"""

from __future__ import annotations

import torch.distributed as dist
from megatron.core.models.gpt import GPTModel
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
)

from megatron_llm.kernels.fused_linear_cross_entropy import fused_linear_cross_entropy


class FusedLossGPTModel(GPTModel):
    """GPTModel with the output layer and the loss fused; `real_vocab_size` excludes the padding rows."""

    def __init__(self, *args: object, real_vocab_size: int, z_loss: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.real_vocab_size = real_vocab_size
        self.z_loss = z_loss
        self.last_z_loss = None  # as ZLossGPTModel's: the last micro-batch's per-token z-loss, for logging

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        plain = (
            labels is None
            or not self.post_process
            or self.mtp_process
            or self.config.mtp_num_layers
            or kwargs.get("inference_context") is not None
        )
        if plain:
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        if self.output_layer.bias is not None:
            raise ValueError("model.fused_linear_cross_entropy: the output layer must have no bias")
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights \
            else self.output_layer.weight
        group = self.pg_collection.tp
        tp = dist.get_world_size(group) if group is not None else 1
        if tp > 1 and self.config.sequence_parallel:
            hidden_states = gather_from_sequence_parallel_region(hidden_states, group=group)
        elif tp > 1:
            hidden_states = copy_to_tensor_model_parallel_region(hidden_states, group=group)
        rank = dist.get_rank(group) if tp > 1 else 0
        loss, lse = fused_linear_cross_entropy(
            hidden_states,
            weight,
            labels.transpose(0, 1),
            z_loss=self.z_loss,
            vocab_start=rank * weight.shape[0],
            valid_vocab=self.real_vocab_size,
            group=group if tp > 1 else None,
            return_lse=True,
        )
        if self.z_loss:
            self.last_z_loss = (self.z_loss * lse.square()).transpose(0, 1)
        return loss.transpose(0, 1).contiguous()

