"""What every forward pass through megatron-core shares: moving a batch to the device, calling the model,
the per-token loss, and which rank holds the reported loss.

Training, validation, log-probability scoring and DPO all run their micro-batches through `forward_batch`;
`holds_loss` is the one place that says which ranks' loss outputs are the real ones.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state

LOSS_KEY = "lm loss"


def holds_loss() -> bool:
    """True on the ranks whose loss outputs count: the last pipeline stage, tensor- and context-parallel
    rank 0. Exactly one such rank exists per data-parallel replica."""
    return (
        parallel_state.is_pipeline_last_stage(ignore_virtual=True)
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_context_parallel_rank() == 0
    )


def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if torch.cuda.is_available():
        return {k: v.cuda(non_blocking=True) for k, v in batch.items()}
    return batch


def forward_batch(model: torch.nn.Module, batch: dict[str, torch.Tensor], packed: bool = False) -> torch.Tensor:
    """The model's per-token loss -log p(label) for a batch; on a pipeline stage other than the last, its
    output activations. A batch may carry an `attention_mask` (True = masked, e.g. packed SFT); with
    `packed`, documents are found from restarting position ids and passed to Transformer Engine as THD."""
    batch = to_device(batch)
    if packed:
        from megatron_llm.training.packed_sequences import packed_seq_params

        return model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"],
                     packed_seq_params=packed_seq_params(batch["position_ids"]))
    return model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])


def token_loss(loss_mask: torch.Tensor, per_token_loss: torch.Tensor):
    """Per-token loss over the unmasked tokens: (loss sum, token count, report).

    megatron-core's schedule divides the sum by the global token count, so every token of the global batch
    weighs the same whatever micro-batch or data-parallel rank it is in.
    """
    losses = per_token_loss.float().reshape(-1)
    mask = loss_mask.to(losses.device).float().reshape(-1)
    loss_sum = torch.sum(losses * mask)
    report = torch.stack([loss_sum.detach(), mask.sum().detach()])
    return loss_sum, mask.sum().to(torch.int), {LOSS_KEY: report}


def global_loss(outputs: list[dict]) -> tuple[float, float]:
    """(loss sum, token count) over the global batch, on every rank: the loss-holding ranks' reports summed
    over the world (which sums exactly the data-parallel replicas)."""
    totals = torch.zeros(2, dtype=torch.float64)
    if holds_loss():
        for item in outputs:
            totals += item[LOSS_KEY].double().cpu()
    if torch.cuda.is_available():
        totals = totals.cuda()
    torch.distributed.all_reduce(totals)
    return float(totals[0]), float(totals[1])
