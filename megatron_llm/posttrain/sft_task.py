"""Supervised fine-tuning as a Task: the language-model loss on assistant tokens of packed or padded chats
(the loss mask and, for packing, the attention mask come with each sample)."""

from __future__ import annotations

from megatron_llm.config.schema import Config
from megatron_llm.posttrain.chat_task import PosttrainTask


class SFTTask(PosttrainTask):
    name = "sft"

    def __init__(self, data, packing: str) -> None:
        super().__init__(data)
        self.packing = packing

    def summary(self, config: Config) -> str:
        return (f"sft: {self.data.train.num_conversations} conversations in {len(self.data.train)} samples "
                f"({self.packing}), {config.schedule.train_iters} steps")
