"""Running steps: which units this process does (--shard I/N), in worker processes (--workers N), with
progress bars, completion markers and the checks that a step's inputs are complete."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass

from tqdm import tqdm

from megatron_llm.data.curate.pipeline import kill_points
from megatron_llm.data.curate.pipeline.buckets import run_buckets
from megatron_llm.data.curate.pipeline.clusters import run_clusters
from megatron_llm.data.curate.pipeline.context import Progress, RunContext
from megatron_llm.data.curate.pipeline.finish import run_finish
from megatron_llm.data.curate.pipeline.mapstep import run_map
from megatron_llm.data.curate.pipeline.plan import Step
from megatron_llm.data.curate.pipeline.verify import run_verify
from megatron_llm.errors import UsageError

STEP_FUNCTIONS = {
    "map": run_map,
    "buckets": run_buckets,
    "verify": run_verify,
    "clusters": run_clusters,
    "finish": run_finish,
}
UNIT_WORDS = {"map": "docs", "verify": "files", "buckets": "bands", "clusters": "steps", "finish": "steps"}


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index_text, count_text = text.split("/")
            index, count = int(index_text), int(count_text)
        except ValueError:
            raise UsageError(f"--shard: expected I/N (e.g. 0/4), got {text!r}") from None
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"--shard: need 0 <= I < N, got {text!r}")
        return cls(index, count)

    def owns(self, unit_index: int) -> bool:
        return unit_index % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def log(message: str) -> None:
    print(f"curate: {message}", file=sys.stderr, flush=True)


def run_unit(ctx: RunContext, step_name: str, unit_index: int, progress: Progress) -> dict:
    """Do one unit of a step unless its marker exists; write the marker last."""
    step = ctx.step(step_name)
    unit = step.units(ctx.layout)[unit_index]
    if ctx.layout.is_done(step.name, unit):
        return ctx.layout.marker_info(step.name, unit)
    info = STEP_FUNCTIONS[step.kind](ctx, step, unit_index, progress)
    kill_points.point(f"{step.name}/{unit}/before-marker")
    ctx.layout.mark_done(step.name, unit, info)
    return info


_QUEUE = None


def _init_worker(queue) -> None:
    global _QUEUE
    _QUEUE = queue


def _worker_unit(ctx: RunContext, step_name: str, unit_index: int) -> dict:
    return run_unit(ctx, step_name, unit_index, _QUEUE.put)


def missing_units(ctx: RunContext, step: Step) -> list[str]:
    return [u for u in step.units(ctx.layout) if not ctx.layout.is_done(step.name, u)]


def requirements_missing(ctx: RunContext, step: Step) -> dict[str, list[str]]:
    """Units of the steps `step` reads from that are not complete yet."""
    out = {}
    for name in step.requires:
        missing = missing_units(ctx, ctx.step(name))
        if missing:
            out[name] = missing
    return out


class Workers:
    """A pool of `count` worker processes, started on first use and shared by all steps of a run."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._pool: ProcessPoolExecutor | None = None
        self._queue = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run(self, ctx: RunContext, step: Step, todo: list[int], bar: tqdm) -> list[dict]:
        if self.count <= 1 or len(todo) == 1:
            return [run_unit(ctx, step.name, index, bar.update) for index in todo]
        if self._pool is None:
            spawn = multiprocessing.get_context("spawn")
            self._queue = spawn.Queue()
            self._pool = ProcessPoolExecutor(
                self.count, mp_context=spawn, initializer=_init_worker, initargs=(self._queue,)
            )
        results = []
        pending = {self._pool.submit(_worker_unit, ctx, step.name, index) for index in todo}
        try:
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_EXCEPTION)
                self._drain(bar)
                for future in done:
                    results.append(future.result())
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        self._drain(bar)
        return results

    def _drain(self, bar: tqdm) -> None:
        while True:
            try:
                bar.update(self._queue.get_nowait())
            except queue_module.Empty:
                return


def run_step_units(ctx: RunContext, step: Step, indices: list[int], workers: Workers) -> None:
    """Run the given units of one step (skipping completed ones) with a progress bar and a summary line."""
    todo = [i for i in indices if not ctx.layout.is_done(step.name, step.units(ctx.layout)[i])]
    if not todo:
        return
    started, cpu_started = time.perf_counter(), time.process_time()
    bar = tqdm(desc=f"curate {step.name}", unit=f" {UNIT_WORDS[step.kind]}", file=sys.stderr, disable=None)
    try:
        results = workers.run(ctx, step, todo, bar)
    finally:
        bar.close()
    elapsed = time.perf_counter() - started
    if step.kind == "map":
        docs = sum(r["docs_in"] for r in results)
        kept = sum(r["docs_out"] for r in results)
        rate = docs / elapsed if elapsed > 0 else 0.0
        log(f"{step.name}: {len(todo)} file(s), {docs:,} docs in, {kept:,} kept, {elapsed:.1f} s ({rate:,.0f} docs/s)")
    else:
        cpu = time.process_time() - cpu_started
        log(f"{step.name}: {len(todo)} unit(s) in {elapsed:.1f} s ({cpu:.1f} CPU s in this process)")


def _my_units(step: Step, count: int, shard: Shard | None) -> list[int]:
    """Unit indices this process runs: all without a shard; its share of a parallel step; a single-process
    step only on shard 0 (so N array tasks never run it N times at once)."""
    if shard is None:
        return list(range(count))
    if not step.parallel:
        return [0] if shard.index == 0 else []
    return [i for i in range(count) if shard.owns(i)]


def run_all(ctx: RunContext, shard: Shard | None, workers: Workers) -> bool:
    """Every step in order. Without a shard, everything runs here. With one, this process does its units
    of each step and stops (returning False) at the first step it cannot finish or start yet."""
    for step in ctx.steps:
        missing = requirements_missing(ctx, step)
        if missing:
            if shard is None:
                raise RuntimeError(f"step {step.name} is missing {missing}")
            name, units = next(iter(missing.items()))
            log(
                f"shard {shard}: {step.name} waits for {len(units)} unit(s) of {name} from other shards "
                f"(e.g. {units[0]}); run this command again once they are done"
            )
            return False
        run_step_units(ctx, step, _my_units(step, len(step.units(ctx.layout)), shard), workers)
        owed = missing_units(ctx, step) if shard is not None else []
        if owed:
            who = "shard 0 runs it" if not step.parallel else f"other shards owe {len(owed)} unit(s)"
            log(f"shard {shard}: did its part of {step.name}; {who}; run this command again once they are done")
            return False
    return True


def run_one_step(ctx: RunContext, step: Step, shard: Shard | None, workers: Workers) -> None:
    """`--step NAME`: this process's units of one step; its inputs must be complete."""
    missing = requirements_missing(ctx, step)
    if missing:
        name, units = next(iter(missing.items()))
        raise UsageError(
            f"--step {step.name}: step {name} is not complete ({len(units)} unit(s) missing, e.g. {units[0]}); "
            f"run `--step {name}` for every shard first"
        )
    indices = _my_units(step, len(step.units(ctx.layout)), shard)
    if not indices:
        log(f"{step.name} runs in one process, on shard 0; shard {shard} has nothing to do")
        return
    run_step_units(ctx, step, indices, workers)
