"""Monitoring pieces without training: the nested tracker settings in YAML and --set, the plain log lines
(off a terminal) against the tqdm bar (on one), and the tracker parameters against the saved config."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
import yaml

from megatron_llm.config import load_config
from megatron_llm.config.loader import config_from_dict, config_to_dict, save_config
from megatron_llm.config.schema import MlflowConfig, WandbConfig
from megatron_llm.errors import UsageError
from megatron_llm.training.callbacks.progress import ProgressBar
from megatron_llm.training.callbacks.tracker_base import flat_params


def test_tracker_settings_from_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("logging:\n  log_interval: 2\n  wandb: {project: p, mode: offline}\n")
    config = load_config(path, ["logging.mlflow.experiment=e"])
    assert config.logging.wandb == WandbConfig(project="p", mode="offline")
    assert config.logging.mlflow == MlflowConfig(experiment="e")
    assert load_config(None).logging.wandb is None, "no mapping: no tracker"
    saved = tmp_path / "saved.yaml"
    save_config(config, saved)
    assert config_from_dict(yaml.safe_load(saved.read_text())) == config
    # Control: a different saved value is not read back as equal.
    changed = config_to_dict(config)
    changed["logging"]["wandb"]["mode"] = "online"
    assert config_from_dict(changed) != config


def test_bad_tracker_settings_name_the_file_line_and_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("# tracker\nlogging:\n  wandb: {mode: sometimes}\n")
    with pytest.raises(UsageError, match=r"bad.yaml:3: logging.wandb.mode must be one of online, offline, "
                                         r"got 'sometimes'$"):
        load_config(path)
    with pytest.raises(UsageError, match=r"unknown field 'logging.mlflow.experimnet'"):
        load_config(None, ["logging.mlflow.experimnet=x"])
    with pytest.raises(UsageError, match=r"logging.wandb must be mapping or null"):
        load_config(None, ["logging.wandb=yes-please"])


def _trainer(step: int = 0):
    return SimpleNamespace(train_iters=10, state=SimpleNamespace(step=step), task=SimpleNamespace(name="pretrain"))


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


RECORD = {"step": 4, "consumed_samples": 32, "loss": 5.123456, "lr": 3e-4, "grad_norm": 1.5, "tokens_per_s": 1234.4,
          "tflops_per_device": 0.5, "mem_bytes": 3 * 2**30}


def test_plain_lines_off_a_terminal_and_the_bar_on_one():
    plain_stream = _Stream(tty=False)
    bar = ProgressBar(stream=plain_stream)
    bar.on_train_start(_trainer())
    bar.on_log(_trainer(), RECORD)
    bar.on_log(_trainer(), {"step": 4, "consumed_samples": 32, "val_loss": 5.5})
    lines = plain_stream.getvalue().splitlines()
    assert lines[0].startswith("step 4/10 | loss 5.1235 | lr 3.00e-04 | grad norm 1.500 | tokens/s 1234 | "
                               "TFLOP/s/GPU 0.50 | mem 3.00 GiB | ETA ")
    assert lines[1] == "validation at step 4 | val loss 5.5000"
    assert "\r" not in plain_stream.getvalue()
    bar.on_train_end(_trainer())
    tty_stream = _Stream(tty=True)
    terminal = ProgressBar(stream=tty_stream)
    assert not terminal.plain
    # Control: on a terminal nothing is printed to stdout line by line (tqdm draws on stderr).
    terminal.on_log(_trainer(), RECORD)
    assert tty_stream.getvalue() == ""


def test_tracker_params_are_the_saved_config_flattened(tmp_path):
    config = load_config(None, ["logging.wandb.mode=offline", "model.num_layers=6"])
    save_config(config, tmp_path / "config.yaml")
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    params = flat_params(config)
    assert params["model.num_layers"] == "6" and params["logging.wandb.mode"] == "offline"
    assert params["logging.mlflow"] == "null" and params["checkpoint.exit_signals"] == '["SIGTERM", "SIGUSR1"]'
    expected = {f"{section}.{key}" for section, values in saved.items() for key, value in values.items()
                if not isinstance(value, dict)}
    expected |= {f"{section}.{key}.{sub}" for section, values in saved.items() for key, value in values.items()
                 if isinstance(value, dict) for sub in value}
    assert set(params) == expected
