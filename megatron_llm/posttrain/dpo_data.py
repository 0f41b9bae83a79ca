"""DPO data: preference pairs from JSONL, as a dataset of sequences where 2i is chosen and 2i+1 rejected.

A record is `{"prompt": ..., "chosen": ..., "rejected": ...}`. The prompt is a string (one user turn) or a
list of messages; each response is a string (the assistant's reply) or a list of messages ending with the
assistant's reply (with or without the prompt's messages in front). Only the final assistant turn is scored.
With an even micro-batch size, consecutive indices keep each pair inside one micro-batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_llm.evaluation.scoring import pad_sequence
from megatron_llm.posttrain.chat import ChatTemplate, ChatTokenizer, EncodedChat, encode_chat, message_problem
from megatron_llm.posttrain.records import DataReport, read_jsonl


def _prompt_messages(prompt: object) -> list[dict] | None:
    if isinstance(prompt, str) and prompt.strip():
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        return prompt
    return None


def _conversation(prompt: list[dict], response: object) -> list[dict] | None:
    if isinstance(response, str):
        return [*prompt, {"role": "assistant", "content": response}]
    if isinstance(response, dict):
        return [*prompt, response]
    if isinstance(response, list) and response:
        return response if response[:len(prompt)] == prompt else [*prompt, *response]
    return None


def _pair_problem(record: dict) -> tuple[str, str] | None:
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            return f"missing '{key}'", "missing field"
    if _prompt_messages(record["prompt"]) is None:
        return "'prompt' must be a non-empty string or list of messages", "malformed pair"
    return None


def load_pairs(path: str | Path, template: ChatTemplate, tokenizer: ChatTokenizer, seq_length: int,
               strict: bool = False) -> tuple[list[tuple[EncodedChat, EncodedChat]], DataReport]:
    """Usable (chosen, rejected) pairs in file order, and the report of rejected records."""
    report = DataReport(str(path), strict=strict)
    pairs = []
    for line, record in read_jsonl(path, report):
        problem = _pair_problem(record)
        if problem:
            report.reject(line, *problem)
            continue
        prompt = _prompt_messages(record["prompt"])
        encoded = []
        for key in ("chosen", "rejected"):
            messages = _conversation(prompt, record[key])
            problem = message_problem(messages)
            if problem is None and messages[-1]["role"] != "assistant":
                problem = "the last message is not an assistant turn", "malformed pair"
            if problem is not None:
                report.reject(line, f"'{key}': {problem[0]}", problem[1])
                break
            try:
                encoded.append(encode_chat(messages, template, tokenizer, last_only=True))
            except ValueError as error:
                report.reject(line, f"'{key}': {error}", "template error")
                break
        if len(encoded) < 2:
            continue
        chosen, rejected = encoded
        if chosen.ids == rejected.ids:
            report.reject(line, "'chosen' and 'rejected' are identical", "chosen equals rejected")
            continue
        longest = max(len(chosen), len(rejected))
        if longest > seq_length + 1:
            report.reject(line, f"a response is {longest} tokens with its prompt, longer than data.seq_length+1 = "
                          f"{seq_length + 1}", "longer than the context")
            continue
        pairs.append((chosen, rejected))
        report.used += 1
    return pairs, report


class PairSequences:
    """Sequence 2i is pair i's chosen response, 2i+1 its rejected one, padded to `seq_length`."""

    def __init__(self, pairs: list[tuple[EncodedChat, EncodedChat]], seq_length: int, pad_id: int) -> None:
        self.pairs = pairs
        self.seq_length = seq_length
        self.pad_id = pad_id

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        encoded = self.pairs[int(index) // 2][int(index) % 2]
        return pad_sequence(encoded.ids, encoded.trained, self.seq_length, self.pad_id)
