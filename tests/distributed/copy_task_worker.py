"""Runs under torchrun: a task defined outside the package (copy the first half of a sequence into the
second) trains through the Trainer with checkpoints, resume and metrics. argv: RUN_DIR OVERRIDES_JSON."""

import json
import sys
from functools import partial

import torch

from megatron_llm.config import load_config
from megatron_llm.training.forward import forward_batch, holds_loss, token_loss
from megatron_llm.training.setup import build_trainer
from megatron_llm.training.task import Task

HALF = 16


class CopyDataset:
    """Sample i: random tokens x (seeded by i), then x again; the loss counts the first k copied tokens, k
    varying by sample (so token-weighted and per-micro-batch means differ)."""

    def __init__(self, vocab: int, size: int, split: int) -> None:
        self.vocab, self.size, self.split = vocab, size, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(self.split * 1_000_003 + index)
        x = torch.randint(0, self.vocab, (HALF,), generator=g)
        text = torch.cat([x, x, x[:1]])
        mask = torch.zeros(2 * HALF)
        mask[HALF - 1:HALF - 1 + 1 + (7 * index) % (HALF + 1)] = 1
        return {"tokens": text[:-1], "labels": text[1:], "loss_mask": mask,
                "position_ids": torch.arange(2 * HALF)}


class CopyTask(Task):
    name = "copy"

    def build_datasets(self, config, train_iters, tokenizer):
        gbs = config.schedule.global_batch_size
        return (CopyDataset(tokenizer.vocab_size, train_iters * gbs, 0),
                CopyDataset(tokenizer.vocab_size, max(config.schedule.eval_iters, 1) * gbs, 1))

    def prepare(self, trainer):
        self.trainer = trainer

    def forward_step(self, data_iterator, model):
        batch = next(data_iterator)
        if torch.is_grad_enabled() and holds_loss():
            target_sum = float((batch["labels"] * batch["loss_mask"]).sum())
            self.trainer.record_metric("target_mean", target_sum, "mean", count=float(batch["loss_mask"].sum()))
            weights = torch.arange(1, 2 * HALF + 1)
            self.trainer.record_metric("token_checksum", float((batch["tokens"] * weights).sum()), "sum")
        return forward_batch(model, batch), partial(token_loss, batch["loss_mask"])


def main() -> None:
    run_dir, overrides = sys.argv[1], json.loads(sys.argv[2])
    config = load_config("examples/configs/tiny.yaml", [f"data.seq_length={2 * HALF}", *overrides])
    build_trainer(config, __import__("pathlib").Path(run_dir), CopyTask()).fit()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
