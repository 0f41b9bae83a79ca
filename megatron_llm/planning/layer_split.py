"""How megatron-core 0.16 splits transformer layers over pipeline stages, even or uneven.

Three ways, mirroring `get_num_layers_to_build` (transformer/transformer_block.py) and
`get_transformer_layer_offset` (transformer/transformer_layer.py), selected by TransformerConfig fields:

- even: every pipeline rank builds num_layers / PP layers, cut into VPP chunks of equal size; chunk k of
  rank r holds the layers of virtual stage k·PP + r.
- `account_for_embedding_in_pipeline_split` / `account_for_loss_in_pipeline_split`: the embedding (loss)
  counts as one layer: (num_layers + 1 [+ 1]) must split evenly over PP ranks and each rank's share over
  VPP chunks; the very first chunk (rank 0, chunk 0) then builds one transformer layer fewer, and so does
  the very last (rank PP-1, chunk VPP-1) for the loss.
- `num_layers_in_first_pipeline_stage` / `num_layers_in_last_pipeline_stage`: those stages hold the given
  counts (each a multiple of VPP), the other ranks split the rest evenly (a multiple of VPP each).
  megatron-core refuses to combine these with the account-for flags.

Chunk order in the model is virtual stage by virtual stage: chunk 0 of ranks 0..PP-1, then chunk 1, ...
so layer offsets follow from the per-chunk counts in that order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PipelineSplit:
    """The layer-split options of one layout (all off: megatron-core's even split)."""

    account_for_embedding: bool = False
    account_for_loss: bool = False
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None

    @property
    def uneven(self) -> bool:
        return self.account_for_embedding or self.account_for_loss or self.explicit

    @property
    def explicit(self) -> bool:
        return self.first_stage_layers is not None or self.last_stage_layers is not None

    def label(self) -> str:
        parts = []
        if self.account_for_embedding:
            parts.append("E")
        if self.account_for_loss:
            parts.append("L")
        if self.first_stage_layers is not None:
            parts.append(f"first={self.first_stage_layers}")
        if self.last_stage_layers is not None:
            parts.append(f"last={self.last_stage_layers}")
        return "+".join(parts) if parts else "even"


EVEN = PipelineSplit()


def split_problem(num_layers: int, pipeline: int, virtual: int | None, split: PipelineSplit) -> str | None:
    """Why megatron-core would refuse this split (its own checks in TransformerConfig.__post_init__), or None."""
    vpp = virtual if (virtual or 1) > 1 else 1
    if split.explicit and (split.account_for_embedding or split.account_for_loss):
        return "first/last stage layer counts cannot be combined with accounting for the embedding or loss"
    if split.explicit:
        middle_layers, middle_stages = num_layers, pipeline
        for name, count in (("first", split.first_stage_layers), ("last", split.last_stage_layers)):
            if count is None:
                continue
            if count <= 0:
                return f"parallel.{name}_stage_layers must be positive, got {count}"
            if count % vpp:
                return f"parallel.{name}_stage_layers={count} is not divisible by the virtual pipeline size {vpp}"
            middle_layers -= count
            middle_stages -= 1
        if middle_stages < 0 or middle_layers < 0 or bool(middle_layers) != bool(middle_stages):
            return (f"{middle_layers} layers are left for {max(middle_stages, 0)} middle pipeline stages "
                    f"(num_layers={num_layers}, pipeline={pipeline})")
        if middle_stages and middle_layers % middle_stages:
            return f"{middle_layers} middle layers do not split evenly over {middle_stages} middle stages"
        if middle_stages and (middle_layers // middle_stages) % vpp:
            return f"{middle_layers // middle_stages} layers per middle stage are not divisible by VPP={vpp}"
        return None
    counted = num_layers + split.account_for_embedding + split.account_for_loss
    if counted % pipeline:
        what = f"num_layers={num_layers}" + (f" + {counted - num_layers}" if counted != num_layers else "")
        return f"{what} is not divisible by parallel.pipeline={pipeline}"
    if (counted // pipeline) % vpp:
        return f"{counted // pipeline} layers per pipeline stage are not divisible by parallel.virtual_pipeline={vpp}"
    per_chunk = counted // pipeline // vpp
    if per_chunk - split.account_for_embedding < 0 or per_chunk - split.account_for_loss < 0:
        return "not enough layers in the first or last virtual stage for the embedding/loss"
    return None


def chunk_counts(num_layers: int, pipeline: int, virtual: int | None, split: PipelineSplit) -> list[list[int]]:
    """Transformer layers each chunk builds: counts[rank][chunk]. The split must be valid (`split_problem`)."""
    vpp = virtual if (virtual or 1) > 1 else 1
    if split.explicit:
        middle_layers, middle_stages = num_layers, pipeline
        for count in (split.first_stage_layers, split.last_stage_layers):
            if count is not None:
                middle_layers -= count
                middle_stages -= 1
        middle = middle_layers // middle_stages if middle_stages else 0
        per_rank = [middle] * pipeline
        if split.first_stage_layers is not None:
            per_rank[0] = split.first_stage_layers
        if split.last_stage_layers is not None:
            per_rank[-1] = split.last_stage_layers
        return [[layers // vpp] * vpp for layers in per_rank]
    counted = num_layers + split.account_for_embedding + split.account_for_loss
    per_chunk = counted // pipeline // vpp
    counts = [[per_chunk] * vpp for _ in range(pipeline)]
    if split.account_for_embedding:
        counts[0][0] -= 1
    if split.account_for_loss:
        counts[-1][-1] -= 1
    return counts


def layer_ranges(num_layers: int, pipeline: int, virtual: int | None, split: PipelineSplit = EVEN,
                 ) -> list[list[tuple[int, int]]]:
    """Global [start, end) layer range of every chunk: ranges[rank][chunk], offsets in model order."""
    counts = chunk_counts(num_layers, pipeline, virtual, split)
    vpp = len(counts[0])
    ranges: list[list[tuple[int, int]]] = [[(0, 0)] * vpp for _ in range(pipeline)]
    start = 0
    for chunk in range(vpp):
        for rank in range(pipeline):
            ranges[rank][chunk] = (start, start + counts[rank][chunk])
            start += counts[rank][chunk]
    return ranges


def balanced_first_last(num_layers: int, pipeline: int, virtual: int | None) -> PipelineSplit | None:
    """The explicit first/last stage counts that keep stages closest to even (fewest layers on the
    busiest stage, the first and last stage lighter when it has to be uneven), or None when none exists."""
    if pipeline < 2:
        return None
    vpp = virtual if (virtual or 1) > 1 else 1
    best: tuple[tuple, PipelineSplit] | None = None
    for first in range(vpp, num_layers + 1, vpp):
        for last in range(vpp, num_layers - first + 1, vpp):
            split = PipelineSplit(first_stage_layers=first, last_stage_layers=last)
            if split_problem(num_layers, pipeline, virtual, split):
                continue
            middle = (num_layers - first - last) // (pipeline - 2) if pipeline > 2 else 0
            busiest = max(first, last, middle)
            key = (busiest, -min(first, last) if pipeline == 2 else first + last, first > last)
            if best is None or key < best[0]:
                best = (key, split)
    return best[1] if best else None
