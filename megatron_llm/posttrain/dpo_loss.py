"""The DPO objective: the loss, the implicit rewards, and the reference model's log-probabilities.

loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

The reference model is the policy's starting weights (or `--ref`); its log-probabilities are computed once
before training and looked up by the sequence's content, so batches need nothing beyond the usual keys.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from megatron_llm.evaluation.scoring import score_samples


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and the implicit rewards beta * (log pi - log ref) of chosen and rejected."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    losses = -F.logsigmoid(chosen_reward - rejected_reward)
    return losses, chosen_reward.detach(), rejected_reward.detach()


def sequence_key(tokens: torch.Tensor, labels: torch.Tensor, loss_mask: torch.Tensor) -> bytes:
    """A digest of one sequence's content (the reference table's key)."""
    h = hashlib.blake2b(digest_size=16)
    for t in (tokens, labels, loss_mask):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()


def reference_logprobs(model: list, dataset: object, seq_length: int, micro_batch_size: int) -> dict[bytes, float]:
    """{sequence key: summed log-probability} of every sequence of `dataset` under `model`."""
    samples = [dataset[i] for i in range(len(dataset))]
    scored = score_samples(model, samples, seq_length, micro_batch_size)
    return {sequence_key(s["tokens"], s["labels"], s["loss_mask"]): float(lp)
            for s, lp in zip(samples, scored.logprob)}
