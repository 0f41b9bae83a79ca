"""The monitoring callbacks a config asks for (every rank: some gather from all ranks): system metrics,
data position, per-layer-group norms, and the W&B and MLflow trackers (imported only when configured)."""

from __future__ import annotations

from megatron_llm.config.schema import Config
from megatron_llm.training.callbacks.base import Callback
from megatron_llm.training.callbacks.data_position import DataPosition
from megatron_llm.training.callbacks.system_metrics import SystemMetrics


def optional_callbacks(config: Config) -> list[Callback]:
    log = config.logging
    callbacks: list[Callback] = [DataPosition()]
    if log.system_metrics:
        callbacks.append(SystemMetrics())
    if log.norms_interval:
        from megatron_llm.training.callbacks.layer_norms import LayerNorms

        callbacks.append(LayerNorms(log.norms_interval))
    if log.wandb is not None:
        from megatron_llm.training.callbacks.wandb_tracker import WandbTracker

        callbacks.append(WandbTracker(log.wandb))
    if log.mlflow is not None:
        from megatron_llm.training.callbacks.mlflow_tracker import MlflowTracker

        callbacks.append(MlflowTracker(log.mlflow))
    return callbacks
