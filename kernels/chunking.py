"""How the fused linear cross-entropy cuts a vocabulary shard into chunks, and the memory that costs.

Torch-free on purpose: the planner (which never imports torch) counts the same chunks the kernels walk.
"""

from __future__ import annotations

DEFAULT_CHUNK_ELEMENTS = 1 << 26  # logits elements per chunk: 128 MiB in bf16, 256 MiB in fp32
CHUNK_MULTIPLE = 128  # chunk widths are multiples of this (aligned matmul operands)
FP32 = 4


def chunk_ranges(local_vocab: int, tokens: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> list[tuple[int, int]]:
    """Column ranges of at most `chunk_elements` logits each (at least one aligned block wide)."""
    width = max(CHUNK_MULTIPLE, (chunk_elements // max(tokens, 1)) // CHUNK_MULTIPLE * CHUNK_MULTIPLE)
    return [(start, min(start + width, local_vocab)) for start in range(0, local_vocab, width)]


def working_bytes(tokens: int, local_vocab: int, hidden: int, bytes_per_element: int, triton: bool,
                  chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Peak temporary memory of one forward+backward beyond inputs and gradients.

    One chunk of logits in the compute dtype, the FP32 accumulator of the hidden-state gradient and four
    FP32 numbers per token (running max, sum, target logit, log-sum-exp). The Triton kernels work on the
    chunk in place; the torch path also makes two FP32 temporaries of the chunk's size.
    """
    start, end = chunk_ranges(local_vocab, tokens, chunk_elements)[0]
    chunk = tokens * (end - start)
    per_chunk = bytes_per_element if triton else bytes_per_element + 2 * FP32
    return chunk * per_chunk + tokens * hidden * FP32 + 4 * tokens * FP32
