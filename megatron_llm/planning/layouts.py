"""Enumerate parallel layouts for a GPU count, estimate each, rank the ones that fit.

A layout is TP x PP (x virtual stages) x CP x DP plus micro-batch size, recompute mode and the
distributed optimizer. Sequence parallelism is on whenever TP > 1 (it only saves memory). Layouts
that break a divisibility rule or do not fit in memory are kept with the reason, and `explain` finds
the single change that would make one fit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from megatron_llm.config.schema import Config
from megatron_llm.config.validation import layout_problems
from megatron_llm.planning.cost import Timing, layout_timing
from megatron_llm.planning.gpus import GIB, GPU
from megatron_llm.planning.memory import MemoryEstimate, estimate_memory, usable_bytes

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

    @property
    def sequence_parallel(self) -> bool:
        return self.tensor > 1

    def label(self) -> str:
        vpp = f"x{self.virtual}" if self.virtual else ""
        return (
            f"TP{self.tensor} PP{self.pipeline}{vpp} CP{self.context} DP{self.data} mb{self.micro_batch} "
            f"recompute={self.recompute} distopt={'on' if self.distributed_optimizer else 'off'}"
        )

    def apply(self, config: Config) -> Config:
        """The config with this layout in place of its own (model, data and batch untouched)."""
        parallel = dataclasses.replace(
            config.parallel,
            tensor=self.tensor,
            pipeline=self.pipeline,
            virtual_pipeline=self.virtual,
            context=self.context,
            sequence_parallel=self.sequence_parallel,
            distributed_optimizer=self.distributed_optimizer,
        )
        model = dataclasses.replace(config.model, recompute=self.recompute, recompute_num_layers=1)
        schedule = dataclasses.replace(config.schedule, micro_batch_size=self.micro_batch)
        return dataclasses.replace(config, parallel=parallel, model=model, schedule=schedule)

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "sequence_parallel": self.sequence_parallel}


def layout_of(config: Config, world_size: int) -> Layout:
    """The layout a config describes (its own recompute_num_layers is kept by `evaluate`, not here)."""
    p, s = config.parallel, config.schedule
    virtual = p.virtual_pipeline if (p.virtual_pipeline or 1) > 1 else None
    model_parallel = p.tensor * p.pipeline * p.context
    data = world_size // model_parallel if world_size % model_parallel == 0 else 0
    return Layout(p.tensor, p.pipeline, virtual, p.context, data, s.micro_batch_size, config.model.recompute,
                  p.distributed_optimizer)


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


def evaluate(config: Config, world_size: int, gpu: GPU, mfu: float, gpus_per_node: int) -> Candidate:
    """Estimate the config's own layout on `world_size` GPUs: memory, time, or why it cannot run."""
    layout = layout_of(config, world_size)
    problems = layout_problems(config, world_size)
    if not problems and layout.tensor > gpus_per_node:
        problems = [f"parallel.tensor={layout.tensor} spans nodes ({gpus_per_node} GPUs per node)"]
    if problems:
        return Candidate(layout, None, None, problems[0])
    memory = estimate_memory(config, world_size, gpu)
    timing = layout_timing(config, world_size, gpu, mfu)
    problem = None
    if not memory.fits(gpu):
        problem = (
            f"needs {memory.total / GIB:.1f} GiB > {usable_bytes(gpu) / GIB:.1f} GiB usable "
            f"({_largest_part(memory)})"
        )
    return Candidate(layout, memory, timing, problem)


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


def candidate_layouts(config: Config, world_size: int) -> list[Layout]:
    """Every layout worth estimating: product of the parallel sizes divides the GPU count."""
    layers = config.model.num_layers
    layouts = []
    for tp in TENSOR_SIZES:
        for cp in CONTEXT_SIZES:
            for pp in _divisors(layers, layers):
                if world_size % (tp * pp * cp):
                    continue
                dp = world_size // (tp * pp * cp)
                virtuals = [None] + ([v for v in _divisors(layers // pp, MAX_VIRTUAL) if v > 1] if pp > 1 else [])
                for virtual in virtuals:
                    for mb in MICRO_BATCHES:
                        for recompute in RECOMPUTE_ORDER:
                            for distopt in (True, False):
                                layouts.append(Layout(tp, pp, virtual, cp, dp, mb, recompute, distopt))
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


def search(config: Config, world_size: int, gpu: GPU, mfu: float, gpus_per_node: int = 8) -> list[Candidate]:
    """All candidate layouts evaluated and sorted by `rank_key` (feasible and rejected alike)."""
    candidates = [
        evaluate(layout.apply(config), world_size, gpu, mfu, gpus_per_node)
        for layout in candidate_layouts(config, world_size)
    ]
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
                    changed = dataclasses.replace(changed, virtual=None)
                changes.append((f"{name}={bigger} (DP={data})", changed))
    return changes


def explain(
    candidate: Candidate, config: Config, world_size: int, gpu: GPU, mfu: float, gpus_per_node: int = 8
) -> tuple[str, Candidate] | None:
    """The single change that makes a rejected layout fit with the shortest step time, if any."""
    options = []
    for description, layout in single_changes(candidate.layout):
        changed = evaluate(layout.apply(config), world_size, gpu, mfu, gpus_per_node)
        if changed.fits:
            options.append((description, changed))
    if not options:
        return None
    return min(options, key=lambda option: rank_key(option[1]))
