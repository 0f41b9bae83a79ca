"""Vocabulary padding, as megatron-core/Megatron-LM do it (a multiple of divisible_by x TP)."""

from __future__ import annotations


def padded_vocab_size(vocab_size: int, make_divisible_by: int, tensor_parallel: int) -> int:
    multiple = make_divisible_by * tensor_parallel
    return -(-vocab_size // multiple) * multiple
