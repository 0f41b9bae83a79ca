"""Enumerate parallel layouts for a GPU count, estimate each, rank the ones that fit by predicted step time.

A layout is TP x PP (x virtual stages) x CP x DP plus micro-batch size, recompute mode, the distributed
optimizer and how layers split over pipeline stages. Sequence parallelism is on whenever TP > 1. Pipeline
sizes need not divide the layer count: when megatron-core's even split is impossible (126 layers over 8 x 8
virtual stages), the layout is tried with the embedding and/or loss counted as a layer, and else with the
most balanced explicit first/last stage layer counts (`stages.py`). Layouts that break a rule or do not
fit in memory are kept with the reason, and `explain` finds the single change that would make one fit.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from megatron_llm.config.schema import Config
from megatron_llm.planning.cost import Timing, TimingOptions, layout_timing
from megatron_llm.planning.gpus import GIB, GPU
from megatron_llm.planning.layer_split import EVEN, PipelineSplit, balanced_first_last, split_problem
from megatron_llm.planning.memory import (
    MemoryEstimate,
    estimate_memory,
    layout_problems_with_split,
    split_of,
    usable_bytes,
)

TENSOR_SIZES = (1, 2, 4, 8)
CONTEXT_SIZES = (1, 2, 4, 8)
MICRO_BATCHES = (1, 2, 4, 8)
MAX_VIRTUAL = 8
RECOMPUTE_ORDER = ("none", "selective", "full")


@dataclass(frozen=True)
class Layout:
    tensor: int
    pipeline: int
    virtual: int | None
    context: int
    data: int
    micro_batch: int
    recompute: str
    distributed_optimizer: bool
    split: PipelineSplit = EVEN
    recompute_block: int | None = None
    """Full recompute by megatron's block method: only this many layers of each model chunk (None: uniform)."""

    @property
    def sequence_parallel(self) -> bool:
        return self.tensor > 1

    @property
    def recompute_label(self) -> str:
        return f"full/block{self.recompute_block}" if self.recompute_block else self.recompute

    def label(self) -> str:
        vpp = f"x{self.virtual}" if self.virtual else ""
        split = f" split={self.split.label()}" if self.split.uneven else ""
        return (
            f"TP{self.tensor} PP{self.pipeline}{vpp}{split} CP{self.context} DP{self.data} mb{self.micro_batch} "
            f"recompute={self.recompute_label} distopt={'on' if self.distributed_optimizer else 'off'}"
        )

    def apply(self, config: Config) -> Config:
        """The config with this layout in place of its own (model, data and batch untouched). Without the
        distributed optimizer, FP8 primary weights (precision.fp8_param_gather) are off: no other optimizer
        updates them."""
        parallel = dataclasses.replace(
            config.parallel,
            tensor=self.tensor,
            pipeline=self.pipeline,
            virtual_pipeline=self.virtual,
            context=self.context,
            sequence_parallel=self.sequence_parallel,
            distributed_optimizer=self.distributed_optimizer,
        )
        block = {"recompute_method": "block", "recompute_num_layers": self.recompute_block} if self.recompute_block \
            else {"recompute_method": "uniform", "recompute_num_layers": 1}
        model = dataclasses.replace(config.model, recompute=self.recompute, **block)
        schedule = dataclasses.replace(config.schedule, micro_batch_size=self.micro_batch)
        precision = config.precision
        if not self.distributed_optimizer and precision.fp8_param_gather:
            precision = dataclasses.replace(precision, fp8_param_gather=False)
        return dataclasses.replace(config, parallel=parallel, model=model, schedule=schedule, precision=precision)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "sequence_parallel": self.sequence_parallel,
                "recompute_label": self.recompute_label}

    def parallel_fields(self) -> dict:
        """The layer-split settings as the engine's `parallel.*` config fields (only the ones not at default)."""
        fields: dict = {}
        if self.split.account_for_embedding:
            fields["account_for_embedding"] = True
        if self.split.account_for_loss:
            fields["account_for_loss"] = True
        if self.split.first_stage_layers is not None:
            fields["first_stage_layers"] = self.split.first_stage_layers
        if self.split.last_stage_layers is not None:
            fields["last_stage_layers"] = self.split.last_stage_layers
        return fields


def layout_of(config: Config, world_size: int) -> Layout:
    """The layout a config describes (a uniform recompute_num_layers is kept by `evaluate`, not here)."""
    p, s, m = config.parallel, config.schedule, config.model
    virtual = p.virtual_pipeline if (p.virtual_pipeline or 1) > 1 else None
    model_parallel = p.tensor * p.pipeline * p.context
    data = world_size // model_parallel if world_size % model_parallel == 0 else 0
    block = m.recompute_num_layers if m.recompute == "full" and m.recompute_method == "block" else None
    return Layout(p.tensor, p.pipeline, virtual, p.context, data, s.micro_batch_size, m.recompute,
                  p.distributed_optimizer, split_of(config), block)


@dataclass(frozen=True)
class Candidate:
    """A layout with its estimate, or with the reason it cannot run."""

    layout: Layout
    memory: MemoryEstimate | None
    timing: Timing | None
    problem: str | None

    @property
    def fits(self) -> bool:
        return self.problem is None

    def as_dict(self) -> dict:
        return {
            "layout": self.layout.as_dict(),
            "fits": self.fits,
            "problem": self.problem,
            "memory": self.memory.as_dict() if self.memory else None,
            "timing": dataclasses.asdict(self.timing) if self.timing else None,
        }


def evaluate(config: Config, world_size: int, gpu: GPU, options: TimingOptions,
             split: PipelineSplit | None = None) -> Candidate:
    """Estimate the config's own layout on `world_size` GPUs: memory, time, or why it cannot run."""
    split = split if split is not None else split_of(config)
    layout = dataclasses.replace(layout_of(config, world_size), split=split)
    problems = layout_problems_with_split(config, world_size, split)
    if problems:
        return Candidate(layout, None, None, problems[0] + _split_hint(config, problems[0]))
    memory = estimate_memory(config, world_size, gpu, split=split, grad_bytes=options.grad_reduce_bytes)
    timing = layout_timing(config, world_size, gpu, options, split)
    problem = None
    if not memory.fits(gpu):
        problem = (
            f"needs {memory.total / GIB:.1f} GiB > {usable_bytes(gpu) / GIB:.1f} GiB usable "
            f"({_largest_part(memory)})"
        )
    return Candidate(layout, memory, timing, problem)


def _split_hint(config: Config, problem: str) -> str:
    """When only the even layer split fails, the uneven one megatron-core accepts, as config fields."""
    p = config.parallel
    if not problem.startswith("model.num_layers=") or p.pipeline < 2:
        return ""
    splits = splits_for(config.model.num_layers, p.pipeline, p.virtual_pipeline)
    if not splits or not splits[0].uneven:
        return ""
    fields = dataclasses.replace(layout_of(config, 0), split=splits[0]).parallel_fields()
    return "; megatron-core splits it unevenly with " + ", ".join(f"parallel.{k}={v}" for k, v in fields.items())


def _largest_part(memory: MemoryEstimate) -> str:
    parts = {
        "weights": memory.weights,
        "gradients": memory.gradients,
        "optimizer state": memory.optimizer,
        "activations": memory.activations,
        "buffers": memory.buffers,
    }
    name = max(parts, key=parts.get)
    return f"{name} {parts[name] / GIB:.1f} GiB"


def _divisors(value: int, limit: int) -> list[int]:
    return [d for d in range(1, min(value, limit) + 1) if value % d == 0]


@functools.lru_cache(maxsize=4096)
def splits_for(num_layers: int, pipeline: int, virtual: int | None) -> list[PipelineSplit]:
    """Layer splits worth trying: even when possible, else the embedding/loss counted as layers, else the
    most balanced explicit first/last stage counts."""
    if pipeline == 1:
        return [EVEN]
    if not split_problem(num_layers, pipeline, virtual, EVEN):
        return [EVEN]
    accounted = [
        split for split in (PipelineSplit(True, True), PipelineSplit(True, False), PipelineSplit(False, True))
        if not split_problem(num_layers, pipeline, virtual, split)
    ]
    if accounted:
        return accounted[:1]
    explicit = balanced_first_last(num_layers, pipeline, virtual)
    return [explicit] if explicit else []


def candidate_layouts(config: Config, world_size: int) -> list[Layout]:
    """Every layout worth estimating: product of the parallel sizes divides the GPU count, layers split."""
    layers = config.model.num_layers
    layouts = []
    for tp in TENSOR_SIZES:
        for cp in CONTEXT_SIZES:
            if world_size % (tp * cp):
                continue
            for pp in _divisors(world_size // (tp * cp), layers):
                dp = world_size // (tp * pp * cp)
                virtuals = [None] + (list(range(2, MAX_VIRTUAL + 1)) if pp > 1 else [])
                for virtual in virtuals:
                    for split in splits_for(layers, pp, virtual):
                        for mb in MICRO_BATCHES:
                            for recompute in RECOMPUTE_ORDER:
                                for distopt in (True, False):
                                    layouts.append(Layout(tp, pp, virtual, cp, dp, mb, recompute, distopt, split))
    return layouts


def rank_key(candidate: Candidate) -> tuple:
    """Fastest first; among equals prefer less communication (TP x CP, then PP), less recompute, the
    distributed optimizer, then the most memory headroom."""
    layout = candidate.layout
    seconds = candidate.timing.step_seconds if candidate.timing else float("inf")
    return (
        round(seconds, 9),
        layout.tensor * layout.context,
        layout.context,
        layout.pipeline,
        layout.virtual or 1,
        RECOMPUTE_ORDER.index(layout.recompute),
        not layout.distributed_optimizer,
        candidate.memory.total if candidate.memory else float("inf"),
        layout.micro_batch,
    )


def least_block_recompute(config: Config, world_size: int, gpu: GPU, options: TimingOptions,
                          layout: Layout) -> Candidate | None:
    """For a full-recompute layout, the block-method variant recomputing the fewest layers per model chunk
    that still fits (fewer recomputed layers: less compute, more memory); None when only recomputing every
    layer fits, which is the uniform layout itself. Memory falls as layers are added, so a bisection."""
    chunks = layout.pipeline * (layout.virtual or 1)
    per_chunk = -(-config.model.num_layers // chunks)
    low, high, best = 1, per_chunk - 1, None
    while low <= high:
        middle = (low + high) // 2
        block = dataclasses.replace(layout, recompute_block=middle)
        candidate = evaluate(block.apply(config), world_size, gpu, options, layout.split)
        if candidate.memory is None:
            return None
        if candidate.fits:
            best, high = candidate, middle - 1
        else:
            low = middle + 1
    return best


def search(config: Config, world_size: int, gpu: GPU, options: TimingOptions) -> list[Candidate]:
    """All candidate layouts evaluated and sorted by `rank_key` (feasible and rejected alike); a full
    recompute layout that fits while the same layout without recompute does not also brings its least block
    recompute that fits."""
    candidates = []
    fits_without_recompute = set()
    for layout in candidate_layouts(config, world_size):
        candidate = evaluate(layout.apply(config), world_size, gpu, options, layout.split)
        candidates.append(candidate)
        if layout.recompute == "none" and candidate.fits:
            fits_without_recompute.add(layout)
        plain = dataclasses.replace(layout, recompute="none")
        if layout.recompute == "full" and candidate.fits and plain not in fits_without_recompute:
            block = least_block_recompute(config, world_size, gpu, options, layout)
            if block is not None:
                candidates.append(block)
    return sorted(candidates, key=rank_key)


def single_changes(layout: Layout) -> list[tuple[str, Layout]]:
    """Layouts one knob away from `layout`, each with a description of the change."""
    changes = []
    if not layout.distributed_optimizer:
        changes.append(("the distributed optimizer on", dataclasses.replace(layout, distributed_optimizer=True)))
    for recompute in RECOMPUTE_ORDER[RECOMPUTE_ORDER.index(layout.recompute) + 1:]:
        changes.append((f"recompute={recompute}", dataclasses.replace(layout, recompute=recompute)))
    for mb in MICRO_BATCHES:
        if mb < layout.micro_batch:
            changes.append((f"micro batch {mb}", dataclasses.replace(layout, micro_batch=mb)))
    if layout.virtual:
        changes.append(("no virtual pipeline stages", dataclasses.replace(layout, virtual=None)))
    for name, field in (("TP", "tensor"), ("PP", "pipeline"), ("CP", "context")):
        for factor in (2, 4):
            bigger = getattr(layout, field) * factor
            data = layout.data * getattr(layout, field) // bigger
            if data >= 1 and layout.data % factor == 0:
                changed = dataclasses.replace(layout, **{field: bigger, "data": data})
                if field == "pipeline":
                    changed = dataclasses.replace(changed, virtual=None, split=EVEN)
                changes.append((f"{name}={bigger} (DP={data})", changed))
    return changes


def explain(
    candidate: Candidate, config: Config, world_size: int, gpu: GPU, timing: TimingOptions
) -> tuple[str, Candidate] | None:
    """The single change that makes a rejected layout fit with the shortest step time, if any."""
    options = []
    for description, layout in single_changes(candidate.layout):
        split = layout.split
        if layout.pipeline > 1 and split_problem(config.model.num_layers, layout.pipeline, layout.virtual, split):
            splits = splits_for(config.model.num_layers, layout.pipeline, layout.virtual)
            if not splits:
                continue
            split = splits[0]
        changed = evaluate(layout.apply(config), world_size, gpu, timing, split)
        if changed.fits:
            options.append((description, changed))
    if not options:
        return None
    return min(options, key=lambda option: rank_key(option[1]))
