"""An MLflow run (`logging.mlflow`; pip install 'megatron-llm[mlflow]'): metrics at their steps, the resolved
config as parameters, the model summary as a text artifact, checkpoint events; a resumed run continues the
MLflow run whose id RUN_DIR/trackers.json keeps."""

from __future__ import annotations

import os
import re
from pathlib import Path

from megatron_llm.config.schema import MlflowConfig
from megatron_llm.training.callbacks.tracker_base import TrackerCallback, save_run_id, saved_run_id

_BATCH = 1000  # MLflow's limit of metrics per log_batch call
_PARAM_BATCH = 100
_PARAM_CHARS = 6000  # MLflow's limit on a parameter value (a long data.paths list is cut)
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")  # characters MLflow refuses in metric and parameter names


class MlflowTracker(TrackerCallback):
    name = "mlflow"
    # A tracking server spends ~20 ms of CPU per request besides ~0.25 ms per metric (SQLite store, MLflow 3):
    # a request every 5 s instead of every step makes the per-request part negligible.
    send_interval = 5.0

    def __init__(self, settings: MlflowConfig) -> None:
        super().__init__()
        self.settings = settings
        self.client = None
        self.run_id: str | None = None
        # An unreachable server (connection refused) gives up after seconds instead of MLflow's 7 retries with
        # exponential backoff; a slow one keeps MLflow's 120 s request timeout (all of it off the training thread).
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")

    def start(self, run_dir: Path, params: dict[str, str], summary: str, step: int) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunStatus

        self.client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        run_id = saved_run_id(run_dir, self.name)
        if run_id is not None and self._exists(run_id):
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            self.client.set_tag(run_id, "megatron_llm.resumed_at_step", str(step))
            self.run_id = run_id
            return
        experiment = self.client.get_experiment_by_name(self.settings.experiment)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else self.client.create_experiment(self.settings.experiment))
        run = self.client.create_run(experiment_id, run_name=self.settings.run_name or Path(run_dir).name,
                                     tags={"megatron_llm.run_dir": str(Path(run_dir).resolve())})
        self.run_id = run.info.run_id
        save_run_id(run_dir, self.name, self.run_id)
        items = [Param(_KEY.sub("_", k), v[:_PARAM_CHARS]) for k, v in sorted(params.items())]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAM_BATCH])
        self.client.log_text(self.run_id, summary + "\n", "model_summary.txt")

    def _exists(self, run_id: str) -> bool:
        """Whether the saved run is on this tracking server (a changed tracking_uri starts a new run)."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_run(run_id)
        except MlflowException:
            return False
        return True

    def log_rows(self, rows: list[tuple[dict[str, float], int, float]]) -> None:
        """Every record since the last send in one request (or a few: MLflow takes 1000 metrics per request)."""
        from mlflow.entities import Metric

        metrics = [Metric(_KEY.sub("_", k), v, int(logged_at * 1000), step)
                   for values, step, logged_at in rows for k, v in values.items()]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH])

    def finish(self, exit_code: int) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if exit_code == 0 else "KILLED")
