"""A Weights & Biases run (`logging.wandb`; pip install 'megatron-llm[wandb]'): metrics at their steps, the
resolved config, the model summary, checkpoint events; a resumed run continues the W&B run whose id
RUN_DIR/trackers.json keeps. Files go to RUN_DIR/wandb/ (offline runs are uploaded later with `wandb sync`)."""

from __future__ import annotations

import uuid
from pathlib import Path

from megatron_llm.config.schema import WandbConfig
from megatron_llm.training.callbacks.tracker_base import TrackerCallback, save_run_id, saved_run_id


class WandbTracker(TrackerCallback):
    name = "wandb"

    def __init__(self, settings: WandbConfig) -> None:
        super().__init__()
        self.settings = settings
        self.run = None
        self.last_step = -1

    def start(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        import wandb

        run_id = saved_run_id(run_dir, self.name) or uuid.uuid4().hex[:8]
        save_run_id(run_dir, self.name, run_id)
        self.run = wandb.init(
            project=self.settings.project, entity=self.settings.entity, name=self.settings.name or Path(run_dir).name,
            mode=self.settings.mode, id=run_id, resume="allow", dir=str(run_dir), config=params,
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.run.summary["model_summary"] = summary
        self.last_step = step

    def log_rows(self, rows: list[tuple[dict[str, float], int, float]]) -> None:
        for values, step, logged_at in rows:
            self.run.log({**values, "_timestamp": logged_at}, step=step)
            self.last_step = max(self.last_step, step)

    def log_event(self, values: dict[str, float], step: int, logged_at: float) -> None:
        # W&B steps only go forward; a background save commits after later steps were logged.
        self.log_rows([(values, max(step, self.last_step), logged_at)])

    def finish(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)
