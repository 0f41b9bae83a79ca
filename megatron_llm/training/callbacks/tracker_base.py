"""What the experiment trackers (W&B, MLflow) share: the values they log, the run id kept in the run directory,
and a background sender that keeps a slow or unreachable tracker off the training step.

A tracker logs, from the logging rank, the numeric values of every record metrics.jsonl gets (at the same
steps), the resolved config as parameters, the model and layout summary, and checkpoint events. Every call to
the tracker's client runs in one background thread; the first failure prints one warning and turns the tracker
off for the rest of the run, so training never waits on or stops for it.

The sender hands records over in batches, at most one batch every `send_interval` seconds (each record keeps
the wall time it was logged at): a request per step to a tracking server costs the server, and the machine
the training shares with it, far more than one request carrying many steps. The end of training, and `flush`,
send what is queued at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import queue
import sys
import threading
import time
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
    """A tracker: subclasses implement `start`, `log_rows`, `finish` and optionally `log_event` (all run in the
    sender thread). The model summary is gathered on every rank at the start (a collective); only the logging
    rank talks to the tracker."""

    name = "tracker"
    send_interval = 1.0
    """Seconds between batches of records sent to the tracker."""

    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._hurry = threading.Event()
        self._thread: threading.Thread | None = None
        self.failed: str | None = None
        self.active = False

    @abstractmethod
    def start(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        """Create or continue the tracker's run."""

    @abstractmethod
    def log_rows(self, rows: list[tuple[dict[str, float], int, float]]) -> None:
        """Send records, oldest first, each as (values, step, unix time when it was logged)."""

    def log_event(self, values: dict[str, float], step: int, logged_at: float) -> None:
        """Send an event (a committed checkpoint), which may come after later steps were logged."""
        self.log_rows([(values, step, logged_at)])

    @abstractmethod
    def finish(self, exit_code: int) -> None:
        """Close the tracker's run."""

    # -- phases ---------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer) -> None:
        from megatron_llm.training.summary import describe_model

        summary = describe_model(trainer.config, trainer.model, trainer.config.model.vocab_size)
        if trainer.is_logging_rank:
            self.begin(Path(trainer.run_dir), flat_params(trainer.config), summary, trainer.state.step)

    def begin(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        """Start the sender thread and queue the tracker's `start` (what `on_train_start` does on rank 0)."""
        self.active = True
        self._hurry.clear()
        self._thread = threading.Thread(target=self._run, name=f"{self.name}-sender", daemon=True)
        self._thread.start()
        self._submit(self.start, run_dir, params, summary, step)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        values = numeric_values(record)
        if self.active and values:
            self._submit(self.log_rows, [(values, int(record["step"]), time.time())])

    def on_checkpoint_saved(self, trainer: Trainer, step: int, path: Path) -> None:
        if self.active:
            self._submit(self.log_event, {"checkpoint/saved_step": float(step)}, step, time.time())

    def on_train_end(self, trainer: Trainer) -> None:
        if not self.active:
            return
        self._submit(self.finish, trainer.state.exit_code)
        self._queue.put(None)
        self._hurry.set()
        self._thread.join()
        self.active = False

    def flush(self) -> None:
        """Send what is queued now and wait until the tracker's client has it."""
        if self.active:
            self._hurry.set()
            self._queue.join()
            self._hurry.clear()

    # -- the sender -----------------------------------------------------------------------------------------
    def _submit(self, fn: Callable, *args: Any) -> None:
        if self.failed is None:
            self._queue.put((fn, args))

    def _run(self) -> None:
        """Take everything queued, send it (consecutive records in one `log_rows`), wait out the interval."""
        done = False
        while not done:
            items = [self._queue.get()]
            while items[-1] is not None:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                done = items[-1] is None
                self._send([item for item in items if item is not None])
            finally:
                for _ in items:
                    self._queue.task_done()
            if not done:
                self._hurry.wait(self.send_interval)

    def _send(self, items: list[tuple[Callable, tuple]]) -> None:
        rows: list = []
        for fn, args in items:
            if fn == self.log_rows:
                rows += args[0]
                continue
            self._call(self.log_rows, rows)
            rows = []
            self._call(fn, *args)
        self._call(self.log_rows, rows)

    def _call(self, fn: Callable, *args: Any) -> None:
        if self.failed is not None or (fn == self.log_rows and not args[0]):
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker never stops training
            self.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"warning: {self.name} logging is off for the rest of this run: {self.failed}",
                  file=sys.stderr, flush=True)
