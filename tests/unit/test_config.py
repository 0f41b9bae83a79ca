"""Config loading, `--set` overrides and validation: every bad config exits 2 naming the field."""

import pytest

from megatron_llm.cli import main as cli
from megatron_llm.config import load_config
from megatron_llm.config.validation import config_problems, layout_problems
from megatron_llm.errors import UsageError

TINY = "examples/configs/tiny.yaml"


def run_train(capsys, monkeypatch, world_size: int, *overrides: str, run_dir=None) -> tuple[int, str]:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    args = ["train", "--config", TINY, "--run-dir", str(run_dir or "/nonexistent/should-not-be-created")]
    for override in overrides:
        args += ["--set", override]
    code = cli(args)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "world_size, overrides, expected",
    [
        (2, ["parallel.tensor=8"], "model.num_attention_heads=4 is not divisible by parallel.tensor=8"),
        (2, ["model.num_attention_heads=6", "model.num_query_groups=3", "model.kv_channels=16", "parallel.tensor=2"],
         "model.num_query_groups=3 and parallel.tensor=2: one must divide the other"),
        (3, ["parallel.pipeline=3"], "model.num_layers=4 is not divisible by parallel.pipeline x parallel.virtual"),
        (4, ["parallel.pipeline=2", "parallel.virtual_pipeline=4"], "model.num_layers=4 is not divisible"),
        (3, ["parallel.tensor=2"], "world size 3 is not divisible by parallel.tensor x parallel.pipeline"),
        (4, ["schedule.global_batch_size=6"], "schedule.global_batch_size=6 is not divisible by"),
        (1, ["data.seq_length=512"], "data.seq_length=512 exceeds model.max_position_embeddings=256"),
        (1, ["precision.fp8=delayed"], "precision.fp8='delayed' needs Transformer Engine"),
        (1, ["parallel.context=2"], "parallel.context > 1 needs Transformer Engine"),
        (1, ["parallel.sequence_parallel=true"], "parallel.sequence_parallel needs parallel.tensor > 1"),
        (1, ["optim.warmup_iters=50"], "optim.warmup_iters=50 must be smaller than the decay length"),
        (1, ["model.recompute=partial"], "model.recompute must be one of none, selective, full, got 'partial'"),
    ],
)
def test_bad_configs_exit_2_naming_the_field(capsys, monkeypatch, tmp_path, world_size, overrides, expected):
    code, err = run_train(capsys, monkeypatch, world_size, *overrides, run_dir=tmp_path / "should-not-be-created")
    assert code == 2
    assert expected in err
    assert not (tmp_path / "should-not-be-created").exists()


class _StandInTrainer:
    """What build_trainer's first act leaves behind (the run directory), without training."""

    def __init__(self, config, run_dir, **_) -> None:
        run_dir.mkdir(parents=True)
        self.state = type("State", (), {"exit_code": 0})()

    def fit(self):
        return self.state


def test_a_valid_config_reaches_the_run_directory(capsys, monkeypatch, tmp_path):
    """Negative control for the test above: with the same arguments but a valid config, the command goes on
    to build the trainer, which creates the run directory, so `not exists()` there is a real check."""
    import megatron_llm.training.setup as setup

    monkeypatch.setattr(setup, "build_trainer", _StandInTrainer)
    code, _ = run_train(capsys, monkeypatch, 1, run_dir=tmp_path / "should-not-be-created")
    assert code == 0
    assert (tmp_path / "should-not-be-created").is_dir()


def test_every_problem_reported_one_per_line(capsys, monkeypatch):
    code, err = run_train(capsys, monkeypatch, 3, "parallel.tensor=8", "data.seq_length=512")
    assert code == 2
    lines = [line.strip() for line in err.splitlines() if line.startswith("  ")]
    assert any("num_attention_heads=4 is not divisible by parallel.tensor=8" in line for line in lines)
    assert any("seq_length=512 exceeds" in line for line in lines)
    assert any("world size 3" in line for line in lines)


def test_unknown_field_and_wrong_type_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  num_layers: 2\n  hiden_size: 64\n")
    with pytest.raises(UsageError, match=r"bad.yaml:3: unknown field 'model.hiden_size'"):
        load_config(bad)
    bad.write_text("parallel:\n  tensor: two\n")
    with pytest.raises(UsageError, match=r"bad.yaml:2: parallel.tensor must be int, got 'two'"):
        load_config(bad)
    bad.write_text("precision:\n  dtype: fp32\n  fp8: mxfp8\n")
    with pytest.raises(UsageError, match=r"bad.yaml:3: precision.fp8 must be one of delayed, current or null, got 'mx"):
        load_config(bad)
    bad.write_text("model: [1, 2\n")
    with pytest.raises(UsageError, match=r"bad.yaml:\d+: invalid YAML"):
        load_config(bad)


def test_overrides_are_typed_and_reject_unknown_sections():
    config = load_config(TINY, ["optim.lr=1e-3", "parallel.tensor=2", "data.paths=[0.7, a, 0.3, b]"])
    assert config.optim.lr == pytest.approx(1e-3) and isinstance(config.optim.lr, float)
    assert config.parallel.tensor == 2
    assert config.data.paths == [0.7, "a", 0.3, "b"]
    with pytest.raises(UsageError, match="unknown section 'paralel'"):
        load_config(TINY, ["paralel.tensor=2"])
    with pytest.raises(UsageError, match="expected key.path=value"):
        load_config(TINY, ["parallel.tensor"])


def test_example_configs_are_valid_for_their_layouts():
    for name, world in [("tiny", 1), ("llama-125m", 8), ("llama-1b", 8), ("llama-1b-wsd", 8), ("llama-7b", 16),
                        ("llama-8b", 16), ("llama-70b", 128)]:
        config = load_config(f"examples/configs/{name}.yaml")
        assert config_problems(config) == [], name
        assert layout_problems(config, world) == [], name


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["train", "--help"])
    assert exit_info.value.code == 0
    assert "--run-dir" in capsys.readouterr().out
