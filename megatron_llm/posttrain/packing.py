"""Fixed-length SFT samples: conversations packed together (attention confined to each) or one per sample.

A conversation of n tokens gives n-1 positions (inputs `ids[:-1]`, labels `ids[1:]`, loss where the label
is an assistant token). Packing places conversations, in order, into the first sample with room for them
(first-fit), so the samples and their order depend only on the data and the seed. A packed sample carries
a block-diagonal causal `attention_mask` (True = masked) and position ids restarting at 0 per
conversation; padding positions attend only to themselves and carry no loss.
"""

from __future__ import annotations

import numpy as np
import torch

from megatron_llm.posttrain.chat import EncodedChat


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of total length <= capacity, each item in the first bin it fits."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > capacity:
            raise ValueError(f"item {index} has length {length} > capacity {capacity}")
        for b, free in enumerate(room):
            if length <= free:
                bins[b].append(index)
                room[b] -= length
                break
        else:
            bins.append([index])
            room.append(capacity - length)
    return bins


def shuffled(items: list, seed: int) -> list:
    """A seeded permutation (the same on every rank and every run)."""
    order = np.random.default_rng(seed).permutation(len(items))
    return [items[i] for i in order]


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """[1, s, s] bool, True where query i may NOT attend key j: other segment or future position.

    Positions with segment -1 (padding) attend only to themselves.
    """
    s = segments.numel()
    same = segments[:, None] == segments[None, :]
    causal = torch.ones(s, s, dtype=torch.bool).tril()
    allowed = same & causal & (segments[:, None] >= 0)
    allowed |= torch.eye(s, dtype=torch.bool)
    return (~allowed).unsqueeze(0)


class SFTDataset:
    """Indexable samples of `seq_length` positions: dicts of tokens, labels, loss_mask, position_ids
    (and attention_mask when packed), as the training loop's forward step expects."""

    def __init__(self, conversations: list[EncodedChat], seq_length: int, pad_id: int, packing: bool) -> None:
        self.conversations = conversations
        self.seq_length = seq_length
        self.pad_id = pad_id
        self.packing = packing
        lengths = [len(c) - 1 for c in conversations]
        if packing:
            self.samples = first_fit(lengths, seq_length)
        else:
            self.samples = [[i] for i in range(len(conversations))]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_conversations(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        s = self.seq_length
        tokens = torch.full((s,), self.pad_id, dtype=torch.int64)
        labels = torch.full((s,), self.pad_id, dtype=torch.int64)
        loss_mask = torch.zeros(s, dtype=torch.float32)
        position_ids = torch.arange(s, dtype=torch.int64)
        segments = torch.full((s,), -1, dtype=torch.int64)
        start = 0
        for segment, conv_index in enumerate(self.samples[int(index)]):
            conv = self.conversations[conv_index]
            n = len(conv) - 1
            ids = torch.tensor(conv.ids, dtype=torch.int64)
            tokens[start:start + n] = ids[:-1]
            labels[start:start + n] = ids[1:]
            loss_mask[start:start + n] = torch.tensor(conv.trained[1:], dtype=torch.float32)
            position_ids[start:start + n] = torch.arange(n)
            segments[start:start + n] = segment
            start += n
        sample = {"tokens": tokens, "labels": labels, "loss_mask": loss_mask, "position_ids": position_ids}
        if self.packing:
            sample["attention_mask"] = block_causal_mask(segments)
        return sample
