"""Typed configuration: dataclass sections, YAML loading, `--set` overrides and validation."""

from megatron_llm.config.loader import config_from_dict, config_to_dict, load_config, save_config
from megatron_llm.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    OptimConfig,
    ParallelConfig,
    PrecisionConfig,
    ScheduleConfig,
)

__all__ = [
    "CheckpointConfig",
    "Config",
    "DataConfig",
    "LoggingConfig",
    "ModelConfig",
    "OptimConfig",
    "ParallelConfig",
    "PrecisionConfig",
    "ScheduleConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]
