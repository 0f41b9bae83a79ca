"""The DPO objective on megatron-core's pipeline: loss, reference log-probabilities and logged rewards.

loss = -log sigmoid(beta * ((log pi(y_w|x) - log ref(y_w|x)) - (log pi(y_l|x) - log ref(y_l|x))))

The reference model is the policy's starting weights (or `--ref`); its log-probabilities are computed once
before training and looked up by the sequence's content, so batches need nothing beyond the usual keys.
Micro-batches hold whole pairs (sequence 2i chosen, 2i+1 rejected); the loss is summed over pairs and
megatron-core's per-token-loss scaling divides it by the number of pairs in the global batch.
"""

from __future__ import annotations

import hashlib
from functools import partial

import torch
import torch.nn.functional as F
from megatron.core import parallel_state

from megatron_llm.evaluation.scoring import score_samples

STAT_NAMES = ("pairs", "reward_accuracy", "reward_margin", "chosen_reward", "rejected_reward")


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


def _contributes() -> bool:
    return (parallel_state.is_pipeline_last_stage(ignore_virtual=True)
            and parallel_state.get_tensor_model_parallel_rank() == 0)


class DPOForwardStep:
    """A `Trainer.forward_step_func` computing the DPO loss; accumulates reward statistics of training steps."""

    def __init__(self, beta: float, reference: dict[bytes, float]) -> None:
        self.beta = beta
        self.reference = reference
        self.stats = torch.zeros(len(STAT_NAMES), dtype=torch.float64)

    def _refs(self, batch: dict) -> torch.Tensor:
        keys = [sequence_key(t, y, m) for t, y, m in zip(batch["tokens"], batch["labels"], batch["loss_mask"])]
        missing = sum(k not in self.reference for k in keys)
        if missing:
            raise RuntimeError(f"{missing} sequences have no reference log-probability")
        return torch.tensor([self.reference[k] for k in keys], dtype=torch.float64)

    def __call__(self, data_iterator, model):
        batch = next(data_iterator)
        if batch["tokens"].shape[0] % 2:
            raise RuntimeError("a DPO micro-batch must hold whole pairs (an even number of sequences)")
        refs = self._refs(batch)
        mask = batch["loss_mask"]
        if torch.cuda.is_available():
            batch = {k: v.cuda(non_blocking=True) for k, v in batch.items()}
        output = model(batch["tokens"], batch["position_ids"], batch.get("attention_mask"), labels=batch["labels"])
        return output, partial(self._loss, mask, refs)

    def _loss(self, mask: torch.Tensor, refs: torch.Tensor, per_token_loss: torch.Tensor):
        mask = mask.to(per_token_loss.device, torch.float32)
        logp = -(per_token_loss.float().reshape(mask.shape) * mask).sum(dim=1)
        refs = refs.to(logp.device, torch.float32)
        losses, chosen, rejected = dpo_loss(logp[0::2], logp[1::2], refs[0::2], refs[1::2], self.beta)
        loss_sum = losses.sum()
        pairs = losses.numel()
        if torch.is_grad_enabled() and _contributes():
            self.stats += torch.tensor([pairs, (chosen > rejected).sum().item(), (chosen - rejected).sum().item(),
                                        chosen.sum().item(), rejected.sum().item()], dtype=torch.float64)
        report = torch.stack([loss_sum.detach().float(), torch.tensor(float(pairs), device=loss_sum.device)])
        return loss_sum, torch.tensor(pairs, dtype=torch.int, device=loss_sum.device), {"lm loss": report}

    def take_stats(self) -> dict[str, float]:
        """Mean reward statistics since the last call, over every rank (a collective: all ranks call it)."""
        totals = self.stats.clone()
        self.stats.zero_()
        if torch.cuda.is_available():
            totals = totals.cuda()
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
        pairs = max(float(totals[0]), 1.0)
        return {name: float(totals[k]) / pairs for k, name in enumerate(STAT_NAMES) if k}


class DPOMetricsHook:
    """Writes reward accuracy and margins (means since the last log) to metrics.jsonl and TensorBoard."""

    def __init__(self, step_func: DPOForwardStep, writer: object, log_interval: int) -> None:
        self.step_func = step_func
        self.writer = writer
        self.log_interval = log_interval

    def after_step(self, trainer: object, result: object) -> bool:
        step = trainer.state.step
        if step % self.log_interval == 0 or step == trainer.train_iters:
            record = {"step": step, **self.step_func.take_stats()}
            self.writer.write(record)
        return False

    def close(self, trainer: object) -> None:
        self.writer.close()
