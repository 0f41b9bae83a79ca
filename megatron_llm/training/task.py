"""What is trained: a Task supplies the datasets and the forward step with its loss; the Trainer runs it.

Pre-training, SFT and DPO are tasks. A new kind of training is a new Task, without touching the Trainer.
A forward step follows megatron-core's contract: `forward_step(data_iterator, model)` returns the model's
output and a function of that output giving `(loss sum, token count, {"lm loss": [sum, count]})`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from megatron_llm.training.forward import forward_batch, token_loss

if TYPE_CHECKING:
    from megatron_llm.config.schema import Config
    from megatron_llm.training.data import TokenizerInfo
    from megatron_llm.training.loop import Trainer

ForwardStep = Callable[[Any, Any], tuple[Any, Callable]]


class Task(ABC):
    """The datasets, the forward step and any extra metrics of one kind of training."""

    name = "task"

    @abstractmethod
    def build_datasets(self, config: Config, train_iters: int, tokenizer: TokenizerInfo) -> tuple[Any, Any | None]:
        """(train dataset, validation dataset or None): map-style datasets of dict samples with `tokens`,
        `labels`, `loss_mask`, `position_ids` (and optionally `attention_mask`)."""

    def forward_step(self, data_iterator: Any, model: Any) -> tuple[Any, Callable]:
        """One micro-batch: the per-token language-model loss over the unmasked tokens."""
        batch = next(data_iterator)
        return forward_batch(model, batch), partial(token_loss, batch["loss_mask"])

    def prepare(self, trainer: Trainer) -> None:
        """Called once the model is built and resumed, before the first step (every rank)."""
        return None

    def log_fields(self, trainer: Trainer) -> dict:
        """Extra fields of every logged step record (e.g. the stage of a staged run)."""
        return {}


class PretrainTask(Task):
    """Next-token prediction on the config's token shards (or its synthetic stream), or on each stage's
    blend in turn for a staged run (`schedule.stages`)."""

    name = "pretrain"

    def __init__(self) -> None:
        self.packed = False
        self.staged = None
        self.trainer: Trainer | None = None

    def prepare(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def build_datasets(self, config: Config, train_iters: int, tokenizer: TokenizerInfo) -> tuple[Any, Any]:
        from megatron_llm.model.builder import use_transformer_engine
        from megatron_llm.runtime.hardware import detect_platform
        from megatron_llm.training.data import build_datasets

        self.packed = config.data.document_mask and use_transformer_engine(config, detect_platform())
        if not config.schedule.stages:
            return build_datasets(config, train_iters, tokenizer, packed_format=self.packed)
        from megatron_llm.training.staged_run import build_staged_datasets

        self.staged, valid = build_staged_datasets(config, train_iters, tokenizer, self.packed)
        return self.staged, valid

    def forward_step(self, data_iterator: Any, model: Any) -> tuple[Any, Callable]:
        batch = next(data_iterator)
        return forward_batch(model, batch, self.packed), partial(self._loss, model, batch["loss_mask"])

    def _loss(self, model: Any, loss_mask: Any, per_token_loss: Any) -> tuple:
        """token_loss, and the z-loss part of it (optim.z_loss) as its own per-token mean `z_loss` in training."""
        from megatron_llm.model.z_loss import stashed_z_loss

        z = stashed_z_loss(model, loss_mask)
        if z is not None and model.training and self.trainer is not None:
            self.trainer.record_metric("z_loss", z[0], "mean", z[1])
        return token_loss(loss_mask, per_token_loss)

    def log_fields(self, trainer: Trainer) -> dict:
        if self.staged is None:
            return {}
        return {"stage": self.staged.names[self.staged.stage_of(trainer.state.consumed_samples - 1)]}
