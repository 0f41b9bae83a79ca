"""Benchmarks during training: `evaluation.tasks: [{task, data, every}]` runs each task every `every` steps
on the training model in its own layout (no export), and logs `eval/<task>/<metric>` to every writer.

It must not change the run: no gradients (no_grad), each model chunk's train/eval mode restored, the data
iterators untouched, and the random state of torch and of megatron's model-parallel RNG tracker saved before
and restored after (greedy generation and eval-mode forward passes should draw nothing, but a task that
samples would).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from megatron_llm.errors import UsageError
from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.config.schema import Config
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult

_OPTIONAL = {"limit": int, "num_fewshot": int, "split": str, "max_new_tokens": int, "fewshot": str, "primer": str}


@dataclass
class EvalSpec:
    task: str
    data: str
    every: int
    options: dict


def parse_specs(items: list) -> list[EvalSpec]:
    """`evaluation.tasks` entries, checked; UsageError names the entry and field."""
    from megatron_llm.evaluation.benchmark_runner import TASKS

    specs = []
    for i, item in enumerate(items):
        where = f"evaluation.tasks[{i}]"
        if not isinstance(item, dict):
            raise UsageError(f"{where}: expected a mapping {{task, data, every}}, got {item!r}")
        unknown = sorted(set(item) - {"task", "data", "every", *_OPTIONAL})
        if unknown:
            raise UsageError(f"{where}.{unknown[0]}: unknown key (keys: task, data, every, {', '.join(_OPTIONAL)})")
        task, data, every = item.get("task"), item.get("data"), item.get("every")
        if task not in TASKS:
            raise UsageError(f"{where}.task: expected one of {', '.join(TASKS)}, got {task!r}")
        if not isinstance(data, str) or not data:
            raise UsageError(f"{where}.data: expected a file or directory path, got {data!r}")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise UsageError(f"{where}.every: expected a positive number of steps, got {every!r}")
        options = {}
        for key, kind in _OPTIONAL.items():
            if key in item:
                if not isinstance(item[key], kind) or isinstance(item[key], bool):
                    raise UsageError(f"{where}.{key}: expected {kind.__name__}, got {item[key]!r}")
                options[key] = item[key]
        specs.append(EvalSpec(task, data, every, options))
    return specs


@contextmanager
def preserved_random_state():
    """Everything random a forward pass could draw from, as it was."""
    from megatron.core import tensor_parallel

    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracked = tracker.get_states()
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        tracker.set_states(tracked)


class PeriodicEval(Callback):
    def __init__(self, config: Config) -> None:
        self.specs = parse_specs(config.evaluation.tasks)
        if not config.data.tokenizer:
            raise UsageError("evaluation.tasks: needs data.tokenizer (benchmarks are text)")
        from megatron_llm.data.tokenizers.tokenizer import load_tokenizer

        self.tokenizer = load_tokenizer(config.data.tokenizer)
        self.vocab = config.model.vocab_size or self.tokenizer.vocab_size
        self.max_length = config.model.max_position_embeddings
        self.micro_batch_size = config.schedule.micro_batch_size

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        due = [s for s in self.specs if trainer.state.step % s.every == 0]
        if not due:
            return
        from megatron_llm.evaluation.benchmark_runner import TaskOptions, run_task
        from megatron_llm.evaluation.native import NativeModel

        native = NativeModel(trainer.model, self.tokenizer, self.vocab, self.max_length, self.micro_batch_size)
        record = {"step": trainer.state.step, "consumed_samples": trainer.state.consumed_samples}
        with preserved_random_state(), torch.no_grad():
            for spec in due:
                options = TaskOptions(batch_size=self.micro_batch_size, hide=[str(trainer.run_dir)], **spec.options)
                outcome = run_task(native, spec.task, spec.data, options)
                for name, value in outcome["metrics"].items():
                    record[f"eval/{spec.task}/{name}"] = value
        trainer.log(record)
