"""What SFT and DPO share as Tasks: their datasets come prepared from chat files, and before the first step
the default chat template (if one was used) is stored with the run and the data report written."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from megatron_llm.posttrain import run
from megatron_llm.training.task import Task

if TYPE_CHECKING:
    from megatron_llm.config.schema import Config
    from megatron_llm.training.data import TokenizerInfo
    from megatron_llm.training.loop import Trainer


class PosttrainTask(Task):
    def __init__(self, data: run.PreparedData) -> None:
        self.data = data

    def build_datasets(self, config: Config, train_iters: int, tokenizer: TokenizerInfo) -> tuple[Any, Any | None]:
        return self.data.train, self.data.valid

    def summary(self, config: Config) -> str:
        """One line saying what is trained, printed at start."""
        return f"{self.name}: {len(self.data.train)} samples, {config.schedule.train_iters} steps"

    def prepare(self, trainer: Trainer) -> None:
        rank0 = trainer.is_logging_rank
        if self.data.default_template:
            run.store_default_template(trainer.config, Path(trainer.run_dir), write=rank0)
        torch.distributed.barrier()
        run.report_data(self.data.reports, Path(trainer.run_dir), rank0)
        if rank0:
            print(self.summary(trainer.config), flush=True)
