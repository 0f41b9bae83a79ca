"""Progress on the logging rank: a tqdm bar on a terminal; otherwise (SLURM logs, nohup, CI) one plain,
greppable line per logged step on stdout, as Megatron-LM prints, instead of carriage-return bar updates:

`step 20/100 | loss 5.4321 | lr 3.00e-04 | grad norm 1.234 | tokens/s 12345 | TFLOP/s/GPU 1.23 | mem 1.20 GiB |
ETA 0:01:23` (one line), and `validation at step 20 | val loss 5.6789`.
"""

from __future__ import annotations

import datetime
import sys
import time
from typing import TYPE_CHECKING, TextIO

from megatron_llm.training.callbacks.base import Callback

if TYPE_CHECKING:
    from megatron_llm.training.loop import Trainer
    from megatron_llm.training.step import StepResult

_FIELDS = (("loss", "loss", ".4f"), ("lr", "lr", ".2e"), ("grad_norm", "grad norm", ".3f"),
           ("tokens_per_s", "tokens/s", ".0f"), ("tflops_per_device", "TFLOP/s/GPU", ".2f"))


def plain_line(record: dict, total: int, eta_seconds: float | None) -> str:
    """One log line for a step record (fields absent or null are left out)."""
    parts = [f"step {record['step']}/{total}"]
    parts += [f"{label} {format(record[key], fmt)}" for key, label, fmt in _FIELDS if record.get(key) is not None]
    if record.get("mem_bytes") is not None:
        parts.append(f"mem {record['mem_bytes'] / 2**30:.2f} GiB")
    if eta_seconds is not None:
        parts.append(f"ETA {datetime.timedelta(seconds=round(eta_seconds))}")
    return " | ".join(parts)


class ProgressBar(Callback):
    """`plain` None: plain lines when `stream` (stdout) is not a terminal, else the bar."""

    def __init__(self, plain: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.plain = not self.stream.isatty() if plain is None else plain
        self._bar = None
        self._postfix: dict[str, str] = {}
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer: Trainer) -> None:
        self._start = (time.perf_counter(), trainer.state.step)
        if self.plain:
            return
        from tqdm import tqdm

        self._bar = tqdm(total=trainer.train_iters, initial=trainer.state.step, desc=trainer.task.name, unit="step",
                         dynamic_ncols=True)

    def _eta(self, trainer: Trainer, step: int) -> float | None:
        start_time, start_step = self._start or (time.perf_counter(), step)
        done = step - start_step
        if done <= 0:
            return None
        return (time.perf_counter() - start_time) / done * max(trainer.train_iters - step, 0)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        if self.plain:
            if record.get("loss") is not None or "grad_norm" in record:
                print(plain_line(record, trainer.train_iters, self._eta(trainer, record["step"])), file=self.stream,
                      flush=True)
            if record.get("val_loss") is not None:
                print(f"validation at step {record['step']} | val loss {record['val_loss']:.4f}", file=self.stream,
                      flush=True)
            return
        for key, label, fmt in (("loss", "loss", ".4f"), ("val_loss", "val", ".4f"), ("tokens_per_s", "tok/s", ".0f")):
            if record.get(key) is not None:
                self._postfix[label] = format(record[key], fmt)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def on_step_end(self, trainer: Trainer, result: StepResult) -> None:
        if self._bar is not None:
            self._bar.update(trainer.state.step - self._bar.n)

    def on_train_end(self, trainer: Trainer) -> None:
        if self._bar is not None:
            self._bar.close()
