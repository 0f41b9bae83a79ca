"""The steps of a curate run, derived from the stage list, and the plan file that pins a run's inputs.

Stages are cut into segments at each dedup stage. Segment k's map step (parallel over input files) reads
the previous segment's documents, drops what the previous dedup stage's clusters removed, runs the
per-document stages and, when the segment ends in a dedup stage, computes that stage's keys. Each dedup
stage then has a bucket step (parallel over bands), for MinHash with `verify` a verify step (parallel
over input files) and a cluster step (one process). `finish` writes `curate.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from megatron_llm.data.curate.config import CurateConfig, StageSpec
from megatron_llm.data.curate.pipeline.layout import Layout, read_json, write_json
from megatron_llm.errors import UsageError

PLAN_VERSION = 1
OUR_NAMES = ("_work", "rejects", "stats", "curate.json")


@dataclass
class Segment:
    index: int
    stages: list[StageSpec]  # per-document stages, in order
    after: StageSpec | None  # dedup stage whose removals are applied first
    before: StageSpec | None  # dedup stage whose keys this segment computes


@dataclass
class Step:
    name: str
    kind: str  # map | buckets | verify | clusters | finish
    parallel: bool
    segment: Segment | None = None
    dedup: StageSpec | None = None
    keys_step: str | None = None  # for dedup steps: the map step that wrote the keys and documents
    requires: list[str] = field(default_factory=list)

    def units(self, layout: Layout) -> list[str]:
        """Names of the independent pieces of work (what --shard I/N divides)."""
        if self.kind in ("map", "verify"):
            return [layout.part(p) for p in range(layout.n_parts)]
        if self.kind == "buckets":
            bands, partitions = self.dedup.params.bands, self.dedup.params.partitions
            return [band_unit(b, r, partitions) for b in range(bands) for r in range(partitions)]
        return ["all"]


def band_unit(band: int, partition: int, partitions: int) -> str:
    return f"band-{band:03d}" if partitions == 1 else f"band-{band:03d}.{partition:03d}"


def segments_of(config: CurateConfig) -> list[Segment]:
    segments: list[Segment] = []
    current: list[StageSpec] = []
    after: StageSpec | None = None
    for spec in config.stages:
        if spec.is_dedup:
            segments.append(Segment(len(segments), current, after, spec))
            current, after = [], spec
        else:
            current.append(spec)
    segments.append(Segment(len(segments), current, after, None))
    return segments


def steps_of(config: CurateConfig) -> list[Step]:
    steps: list[Step] = []
    previous: list[str] = []
    for segment in segments_of(config):
        map_name = f"map-{segment.index}"
        steps.append(Step(map_name, "map", True, segment=segment, requires=previous))
        previous = [map_name]
        dedup = segment.before
        if dedup is None:
            continue
        label = dedup.label
        steps.append(Step(f"{label}.buckets", "buckets", True, dedup=dedup, keys_step=map_name, requires=previous))
        previous = [f"{label}.buckets"]
        if dedup.name in ("minhash_dedup", "simhash_dedup") and dedup.params.verify:
            steps.append(Step(f"{label}.verify", "verify", True, dedup=dedup, keys_step=map_name, requires=previous))
            previous = [f"{label}.verify"]
        steps.append(Step(f"{label}.clusters", "clusters", False, dedup=dedup, keys_step=map_name, requires=previous))
        previous = [f"{label}.clusters"]
    steps.append(Step("finish", "finish", False, requires=previous))
    return steps


def clusters_step_of(steps: list[Step], dedup: StageSpec) -> Step:
    return next(s for s in steps if s.kind == "clusters" and s.dedup is dedup)


def describe_inputs(inputs: list[Path]) -> list[dict]:
    out = []
    for path in inputs:
        stat = path.stat()
        out.append({"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return out


def dedup_algorithms(config: CurateConfig) -> dict[str, dict]:
    """How each dedup stage's keys are made: keys from another version must never be mixed in."""
    from megatron_llm.data.curate.stages.dedup import keyer_for

    return {spec.label: keyer_for(spec).describe() for spec in config.stages if spec.is_dedup}


def make_plan(config: CurateConfig, inputs: list[Path]) -> dict:
    described = describe_inputs(inputs)
    algorithms = dedup_algorithms(config)
    basis = {"version": PLAN_VERSION, "config": config.fingerprint_data(), "inputs": described, "keys": algorithms}
    fingerprint = hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()
    return {
        "version": PLAN_VERSION,
        "fingerprint": fingerprint,
        "config": config.resolved(),
        "inputs": described,
        "keys": algorithms,
        "steps": [step.name for step in steps_of(config)],
    }


def _check_output_dir(output: Path) -> None:
    if not output.exists():
        return
    if not output.is_dir():
        raise UsageError(f"--output {output}: exists and is not a directory")
    for entry in output.iterdir():
        name = entry.name
        ours = name in OUR_NAMES or name.startswith(".") or (name.startswith("part-") and name.endswith(".jsonl"))
        if not ours:
            raise UsageError(
                f"--output {output}: the directory holds {name!r}, which curate did not write; "
                "use an empty or new directory"
            )


def establish_plan(layout: Layout, plan: dict) -> str:
    """Write the plan of a new run, or check it against the one in the output directory.

    Returns 'complete' when curate.json of the same run exists, else 'ready'. A different config or
    different inputs in an existing run directory is a UsageError (reusing its markers would be wrong).
    """
    output = layout.output
    _check_output_dir(output)
    hint = "use a new --output directory (or delete this one) to start over"
    if layout.summary_file.is_file():
        done = read_json(layout.summary_file)
        if done.get("fingerprint") != plan["fingerprint"]:
            raise UsageError(f"--output {output}: holds a finished curate run of a different config or inputs; {hint}")
        return "complete"
    if layout.plan_file.is_file():
        existing = read_json(layout.plan_file)
        if existing.get("fingerprint") != plan["fingerprint"]:
            raise UsageError(f"--output {output}: holds a curate run of a different config or inputs; {hint}")
        return "ready"
    os.makedirs(layout.work, exist_ok=True)
    write_json(layout.plan_file, plan)
    return "ready"
