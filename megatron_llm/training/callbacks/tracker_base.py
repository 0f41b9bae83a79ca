"""What the experiment trackers (W&B, MLflow) share: the values they log, the run id kept in the run directory,
and a background sender that keeps a slow or unreachable tracker off the training step.

A tracker logs, from the logging rank, the numeric values of every record metrics.jsonl gets (at the same
steps), the resolved config as parameters, the model and layout summary, and checkpoint events. Every call to
the tracker's client runs in one background thread; the first failure prints one warning and turns the tracker
off for the rest of the run, so training never waits on or stops for it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from megatron_llm.config.loader import config_to_dict
from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer

RUN_IDS = "trackers.json"


def numeric_values(record: dict) -> dict[str, float]:
    """The finite numbers of a record except `step` (what metrics.jsonl writes as numbers, without nulls)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def flat_params(config: Any) -> dict[str, str]:
    """The resolved config as `section.field` (or `section.field.sub`) -> value text."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        else:
            flat[prefix] = json.dumps(value) if isinstance(value, (list, type(None))) else str(value)

    walk("", config_to_dict(config) if dataclasses.is_dataclass(config) else config)
    return flat


def saved_run_id(run_dir: Path, tracker: str) -> str | None:
    path = Path(run_dir) / RUN_IDS
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get(tracker)
    except json.JSONDecodeError:
        return None


def save_run_id(run_dir: Path, tracker: str, run_id: str) -> None:
    path = Path(run_dir) / RUN_IDS
    ids = json.loads(path.read_text()) if path.is_file() else {}
    ids[tracker] = run_id
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(ids, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


class TrackerCallback(Callback, ABC):
    """A tracker: subclasses implement `start`, `log_values`, `log_event` and `finish` (run in the sender
    thread). The model summary is gathered on every rank at the start (a collective); only the logging rank
    talks to the tracker."""

    name = "tracker"

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.failed: str | None = None
        self.active = False

    @abstractmethod
    def start(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        """Implemented by each tracker; runs in the sender thread."""

    @abstractmethod
    def log_values(self, values: dict[str, float], step: int) -> None:
        """Implemented by each tracker; runs in the sender thread."""

    def log_event(self, values: dict[str, float], step: int) -> None:
        self.log_values(values, step)

    @abstractmethod
    def finish(self, exit_code: int) -> None:
        """Implemented by each tracker; runs in the sender thread."""

    # -- phases ---------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        from megatron_llm.training.summary import describe_model

        summary = describe_model(trainer.config, trainer.model, trainer.config.model.vocab_size)
        if trainer.is_logging_rank:
            self.begin(Path(trainer.run_dir), flat_params(trainer.config), summary, trainer.state.step)

    def begin(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        """Start the sender thread and queue the tracker's `start` (what `on_train_start` does on rank 0)."""
        self.active = True
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-sender", daemon=True)
        self._thread.start()
        self._submit(self.start, run_dir, params, summary, step)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        values = numeric_values(record)
        if self.active and values:
            self._submit(self.log_values, values, int(record["step"]))

    def on_checkpoint_saved(self, trainer: Trainer, step: int, path: Path) -> None:
        if self.active:
            self._submit(self.log_event, {"checkpoint/saved_step": float(step)}, step)

    def on_train_end(self, trainer: Trainer) -> None:
        if not self.active:
            return
        self._submit(self.finish, trainer.state.exit_code)
        self._queue.put(None)
        self._thread.join()
        self.active = False

    # -- the sender -----------------------------------------------------------------------------------------
    def _submit(self, fn: Callable, *args: Any) -> None:
        if self.failed is None:
            self._queue.put((fn, args))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.failed is not None:
                continue
            fn, args = item
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                print(f"warning: {self.name} logging is off for the rest of this run: {self.failed}",
                      file=sys.stderr, flush=True)
