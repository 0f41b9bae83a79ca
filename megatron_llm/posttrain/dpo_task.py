"""DPO as a Task: reference log-probabilities computed once before the first step, the DPO loss on pairs,
and reward statistics recorded as metrics (means over pairs since the last log)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from megatron_llm.config.schema import Config
from megatron_llm.posttrain.chat_task import PosttrainTask
from megatron_llm.posttrain.dpo_loss import dpo_loss, reference_logprobs, sequence_key
from megatron_llm.training.forward import LOSS_KEY, forward_batch, holds_loss
from megatron_llm.training.loop import Trainer


class DPOTask(PosttrainTask):
    """Micro-batches hold whole pairs (sequence 2i chosen, 2i+1 rejected); the loss is summed over pairs and
    megatron-core's per-token-loss scaling divides it by the number of pairs in the global batch."""

    name = "dpo"

    def __init__(self, data, beta: float, reference: Path, init: Path | None) -> None:
        super().__init__(data)
        self.beta = beta
        self.reference_path = reference
        self.init_path = init
        self.reference: dict[bytes, float] = {}
        self.trainer: Trainer | None = None

    def summary(self, config: Config) -> str:
        return f"dpo: {len(self.data.train) // 2} pairs, beta {self.beta}, {config.schedule.train_iters} steps"

    def prepare(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.reference = self._reference_table(trainer)
        super().prepare(trainer)

    def _reference_table(self, trainer: Trainer) -> dict[bytes, float]:
        """Reference log-probabilities of every sequence; leaves the policy's weights in the model.

        The model holds the policy: the run's resumed checkpoint, or `--init`. Unless that already is the
        reference (a fresh run whose reference is its init), the reference weights are loaded, every sequence
        scored, and the policy's weights loaded back.
        """
        from megatron_llm.training.checkpoint.save_load import load_model_weights

        resumed = trainer.state.step > 0
        holds_reference = not resumed and self.init_path is not None and self.init_path == self.reference_path
        if not holds_reference:
            load_model_weights(trainer.model, self.reference_path)
        s = trainer.config.schedule
        table: dict[bytes, float] = {}
        for dataset in (self.data.train, self.data.valid):
            if dataset is not None:
                table.update(reference_logprobs(trainer.model, dataset, trainer.config.data.seq_length,
                                                s.micro_batch_size))
        if resumed:
            trainer.checkpointer.load(trainer)
        elif not holds_reference:
            if self.init_path is not None:
                load_model_weights(trainer.model, self.init_path)
            trainer.optimizer.reload_model_params()
        return table

    def _refs(self, batch: dict) -> torch.Tensor:
        keys = [sequence_key(t, y, m) for t, y, m in zip(batch["tokens"], batch["labels"], batch["loss_mask"])]
        missing = sum(k not in self.reference for k in keys)
        if missing:
            raise RuntimeError(f"{missing} sequences have no reference log-probability")
        return torch.tensor([self.reference[k] for k in keys], dtype=torch.float64)

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        if batch["tokens"].shape[0] % 2:
            raise RuntimeError("a DPO micro-batch must hold whole pairs (an even number of sequences)")
        return forward_batch(model, batch), partial(self._loss, batch["loss_mask"], self._refs(batch))

    def _loss(self, mask: torch.Tensor, refs: torch.Tensor, per_token_loss: torch.Tensor):
        mask = mask.to(per_token_loss.device, torch.float32)
        logp = -(per_token_loss.float().reshape(mask.shape) * mask).sum(dim=1)
        refs = refs.to(logp.device, torch.float32)
        losses, chosen, rejected = dpo_loss(logp[0::2], logp[1::2], refs[0::2], refs[1::2], self.beta)
        pairs = losses.numel()
        if torch.is_grad_enabled() and holds_loss() and self.trainer is not None:
            totals = {"reward_accuracy": (chosen > rejected).sum(), "reward_margin": (chosen - rejected).sum(),
                      "chosen_reward": chosen.sum(), "rejected_reward": rejected.sum()}
            for name, total in totals.items():
                self.trainer.record_metric(name, float(total), "mean", count=pairs)
        loss_sum = losses.sum()
        report = torch.stack([loss_sum.detach().float(), torch.tensor(float(pairs), device=loss_sum.device)])
        return loss_sum, torch.tensor(pairs, dtype=torch.int, device=loss_sum.device), {LOSS_KEY: report}
