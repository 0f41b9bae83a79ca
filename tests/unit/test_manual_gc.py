"""schedule.manual_gc_interval: automatic collection off for the run, a collection every N steps, restored at
the end. The reference is the interpreter itself: a reference cycle is only freed by a collection, which a
weak reference observes."""

from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace

import pytest

from megatron_llm.config.loader import load_config
from megatron_llm.config.validation import config_problems
from megatron_llm.training.callbacks.manual_gc import ManualGC


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def _cycle() -> weakref.ref:
    return weakref.ref(_Cycle())


@pytest.fixture
def automatic_gc():
    was = gc.isenabled()
    gc.enable()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


def test_collects_every_interval_steps_and_only_then(automatic_gc) -> None:
    callback = ManualGC(3)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0))
    callback.on_train_start(trainer)
    assert not gc.isenabled()
    alive = _cycle()
    for step in (1, 2):
        trainer.state.step = step
        for _ in range(2000):  # far past generation 0's threshold: the automatic collector would have run
            _cycle()
        callback.on_step_end(trainer, None)
        assert alive() is not None, f"collected at step {step}"
    trainer.state.step = 3
    callback.on_step_end(trainer, None)
    assert alive() is None
    callback.on_train_end(trainer)
    assert gc.isenabled()


def test_negative_control_automatic_gc_collects_between_steps(automatic_gc) -> None:
    """Without the callback, allocation alone triggers collections: the cycle does not survive to step 3."""
    alive = _cycle()
    for _ in range(100_000):
        _cycle()
    assert alive() is None


def test_config_field_and_example_recipe() -> None:
    assert load_config("examples/configs/llama-8b.yaml").schedule.manual_gc_interval == 100
    assert load_config("examples/configs/tiny.yaml").schedule.manual_gc_interval is None
    bad = load_config("examples/configs/tiny.yaml", ["schedule.manual_gc_interval=0"])
    assert any("schedule.manual_gc_interval=0" in p for p in config_problems(bad))
