"""The contiguous parameter/gradient buffers megatron-core's DDP allocates, element for element.

megatron-core 0.16 (`distributed/param_and_grad_buffer.py`) lays each model chunk's parameters out in
one buffer per (param dtype, grad dtype), in reverse registration order, split into buckets of about
`bucket_size` elements. With the distributed optimizer every parameter starts on a 64-element boundary,
every bucket is padded to a multiple of lcm(DP, 128) and the shared embedding gets a bucket of its own;
each DP rank then owns one contiguous 1/DP slice of every bucket, and optimizer state exists only for
the parameters (or parts of them) inside that slice. Reproducing this is what makes the static-memory
estimate exact rather than "about 16 bytes per parameter".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from megatron_llm.model.params import ParamTensor

PARAM_ALIGNMENT = 64
BUCKET_ALIGNMENT = 128
DEFAULT_MIN_BUCKET = 40_000_000


@dataclass(frozen=True)
class Bucket:
    start: int
    end: int
    param_ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class BufferLayout:
    """One DDP buffer: its padded size and its buckets with the parameter ranges inside each."""

    numel: int
    buckets: tuple[Bucket, ...]

    def shard_numel(self, data_parallel: int, rank: int) -> tuple[int, int]:
        """(elements, tensors) of this buffer whose optimizer state lives on DP rank `rank`."""
        elements = tensors = 0
        for bucket in self.buckets:
            size = (bucket.end - bucket.start) // data_parallel
            lo, hi = bucket.start + rank * size, bucket.start + (rank + 1) * size
            for p_start, p_end in bucket.param_ranges:
                overlap = min(hi, p_end) - max(lo, p_start)
                if overlap > 0:
                    elements += overlap
                    tensors += 1
        return elements, tensors


def default_bucket_size(data_parallel: int) -> int:
    """megatron-core's bucket size when DistributedDataParallelConfig.bucket_size is None."""
    return max(DEFAULT_MIN_BUCKET, 1_000_000 * data_parallel)


def _pad(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def buffer_layout(
    tensors: Sequence[ParamTensor], data_parallel: int, distributed_optimizer: bool, bucket_size: int | None
) -> BufferLayout:
    """Lay out `tensors` (in registration order) the way one megatron-core DDP buffer does.

    `bucket_size` None means a single bucket (no overlapped grad reduce, a pipeline rank other than the
    first, or a model chunk after the first).
    """
    bucket_divisor = math.lcm(data_parallel, BUCKET_ALIGNMENT)
    buckets: list[Bucket] = []
    members: list[tuple[int, int]] = []
    bucket_start = start = end = 0

    def close(at: int) -> int:
        nonlocal bucket_start, members
        bucket_end = _pad(at, bucket_divisor) if distributed_optimizer else at
        buckets.append(Bucket(bucket_start, bucket_end, tuple(members)))
        bucket_start, members = bucket_end, []
        return bucket_end

    for tensor in reversed(tensors):
        if distributed_optimizer:
            start = _pad(start, PARAM_ALIGNMENT)
        own_bucket = tensor.shared_embedding and distributed_optimizer
        if own_bucket and members:
            start = close(start)
        end = start + tensor.numel
        members.append((start, end))
        if (bucket_size is not None and end - bucket_start >= bucket_size) or own_bucket:
            start = close(end)
        else:
            start = end
    if members:
        close(end)
    return BufferLayout(buckets[-1].end if buckets else 0, tuple(buckets))
