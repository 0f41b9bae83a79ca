"""Checkpoint bookkeeping without training: metadata and verification, tracker, retention, mirror, guards."""

from __future__ import annotations

import json
import os
import pickle
import signal
from types import SimpleNamespace

import pytest
import torch

from megatron_llm.errors import UsageError
from megatron_llm.training.callbacks.bad_steps import BadStepGuard
from megatron_llm.training.callbacks.exit_policy import parse_signals
from megatron_llm.training.callbacks.fault_injection import FaultInjection
from megatron_llm.training.callbacks.spike_guard import SpikeDetector
from megatron_llm.training.checkpoint.command import main as checkpoint_main
from megatron_llm.training.checkpoint.format import (
    METADATA,
    TRACKER,
    CheckpointError,
    complete_steps,
    describe_files,
    iter_dir,
    list_checkpoints,
    read_tracker,
    resolve_checkpoint,
    verify_directory,
    write_metadata,
    write_tracker,
)
from megatron_llm.training.checkpoint.mirror import Mirror
from megatron_llm.training.checkpoint.retention import prune, steps_to_keep
from megatron_llm.training.exit_codes import TrainingAborted
from megatron_llm.training.step import StepResult

LAYOUT = {"tensor": 2, "pipeline": 2, "virtual_pipeline": None, "data": 2}


def fake_checkpoint(root, step, complete=True, tracker=True):
    """A directory shaped like a torch_dist checkpoint, with real file hashes in megatron_llm.json."""
    directory = iter_dir(root, step)
    directory.mkdir(parents=True)
    for rank in range(2):
        (directory / f"__{rank}_0.distcp").write_bytes(os.urandom(1000 + step))
    # `checkpoint verify` reads .metadata through the restricted unpickler: a real (empty) torch one.
    from torch.distributed.checkpoint.metadata import Metadata

    (directory / ".metadata").write_bytes(pickle.dumps(Metadata(state_dict_metadata={})))
    torch.save({"iteration": step}, directory / "common.pt")
    if complete:
        names = sorted(p.name for p in directory.iterdir())
        write_metadata(directory, {"step": step, "consumed_samples": step * 8, "layout": LAYOUT,
                                   "contents": ["model", "optimizer"], "files": describe_files(directory, names)})
        if tracker:
            write_tracker(root, step)
    return directory


def test_complete_checkpoint_verifies_and_damage_is_named(tmp_path):
    directory = fake_checkpoint(tmp_path, 4)
    assert verify_directory(directory) == []
    shard = directory / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert verify_directory(directory, deep=False) == []
    problems = verify_directory(directory)
    assert len(problems) == 1 and "__1_0.distcp" in problems[0] and "checksum" in problems[0]
    with open(directory / "__0_0.distcp", "r+b") as f:
        f.truncate(10)
    assert any("__0_0.distcp" in p and "truncated" in p for p in verify_directory(directory, deep=False))


def test_hidden_megatron_metadata_file_is_listed(tmp_path):
    files = json.loads((fake_checkpoint(tmp_path, 2) / METADATA).read_text())["files"]
    assert ".metadata" in files and "common.pt" in files


def test_partial_save_is_ignored_and_tracker_wins(tmp_path):
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4, complete=False)
    assert read_tracker(tmp_path) == 2
    assert resolve_checkpoint(tmp_path) == iter_dir(tmp_path, 2)
    entries = {e.step: e for e in list_checkpoints(tmp_path)}
    assert entries[2].complete and entries[2].latest and entries[2].layout == LAYOUT
    assert not entries[4].complete
    assert "missing" in verify_directory(iter_dir(tmp_path, 4))[0]
    assert complete_steps(tmp_path) == [2]


def test_tracker_is_replaced_atomically(tmp_path):
    write_tracker(tmp_path, 3)
    write_tracker(tmp_path, 10)
    assert (tmp_path / TRACKER).read_text() == "10\n"
    assert [p.name for p in tmp_path.iterdir()] == [TRACKER]
    (tmp_path / TRACKER).write_text("garbage")
    with pytest.raises(CheckpointError, match="expected a step number"):
        read_tracker(tmp_path)


def test_retention_keeps_last_k_every_m_and_latest():
    assert steps_to_keep([2, 4, 6, 8, 10], 10, 2, None) == {8, 10}
    assert steps_to_keep([2, 4, 6, 8, 10], 10, 1, 4) == {4, 8, 10}
    assert steps_to_keep([2, 4, 6], 6, None, None) == {2, 4, 6}


def test_prune_removes_old_and_partial_but_not_newer_partial(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 5, complete=False)
    fake_checkpoint(tmp_path, 8, complete=False)
    removed = prune(tmp_path, keep_last=1, keep_every=4)
    assert sorted(p.name for p in removed) == ["iter_0000002", "iter_0000005"]
    assert sorted(p.name for p in tmp_path.glob("iter_*")) == ["iter_0000004", "iter_0000006", "iter_0000008"]


def test_mirror_copies_verifies_and_prunes(tmp_path):
    source, target = tmp_path / "fast", tmp_path / "durable"
    mirror = Mirror(target, keep_last=1)
    for step in (2, 4):
        mirror.submit(fake_checkpoint(source, step))
    damaged = fake_checkpoint(source, 6)
    (damaged / "common.pt").write_bytes(b"commoN")
    mirror.submit(damaged)
    mirror.close()
    assert sorted(p.name for p in target.glob("iter_*")) == ["iter_0000004"]
    assert read_tracker(target) == 4 and verify_directory(target / "iter_0000004") == []
    assert len(mirror.errors) == 1 and "common.pt" in mirror.errors[0]
    assert not list(target.glob(".*partial"))


def test_checkpoint_command_ls_and_verify(tmp_path, capsys):
    run = tmp_path / "run"
    fake_checkpoint(run / "checkpoints", 2)
    directory = fake_checkpoint(run / "checkpoints", 4)
    assert checkpoint_main(["ls", str(run)]) == 0
    out = capsys.readouterr().out
    assert "iter_0000004" in out and "TP=2 PP=2 DP=2" in out and "unverified (latest)" in out
    assert checkpoint_main(["verify", str(run)]) == 0
    assert "OK, step 4" in capsys.readouterr().out
    with open(directory / "__1_0.distcp", "r+b") as f:
        f.truncate(5)
    assert checkpoint_main(["verify", str(directory)]) == 1
    assert "__1_0.distcp" in capsys.readouterr().out


def test_bad_step_guard_aborts_after_limit():
    guard = BadStepGuard(3)
    trainer = SimpleNamespace(state=SimpleNamespace(step=0))
    for step, skipped in enumerate([True, True, False, True, True], start=1):
        trainer.state.step = step
        guard.on_step_end(trainer, StepResult(float("nan"), None, skipped, 0))
    trainer.state.step = 6
    with pytest.raises(TrainingAborted, match="3 steps in a row"):
        guard.on_step_end(trainer, StepResult(float("nan"), None, True, 0))


def test_spike_detector_flags_only_far_outliers():
    detector = SpikeDetector(sigma=5, window=8)
    assert all(detector.check(s, 5.0 - 0.01 * s) is None for s in range(8))
    assert detector.check(8, 5.05) is None
    spike = detector.check(9, 40.0)
    assert spike is not None and spike.step == 9 and spike.mean == pytest.approx(4.97, abs=0.05)
    assert detector.check(10, float("nan")) is None


def test_fault_spec_parsing_and_signal_names():
    injection = FaultInjection.__new__(FaultInjection)
    injection.pending = ["nan_loss_step3", "spike_loss_step7"]
    task = SimpleNamespace(forward_step=lambda data, model: (None, None))
    trainer = SimpleNamespace(task=task, forward_step=task.forward_step, state=SimpleNamespace(step=0))
    poisoned_steps = []
    for step in range(1, 9):
        trainer.state.step = step - 1
        injection.on_step_start(trainer)
        poisoned_steps += [step] if trainer.forward_step is not task.forward_step else []
        trainer.forward_step = task.forward_step
    assert poisoned_steps == [3, 7] and injection.pending == []
    with pytest.raises(UsageError, match="SIGFOO"):
        parse_signals(["SIGFOO"])
    assert parse_signals(["sigusr1", "SIGTERM"]) == [signal.SIGUSR1, signal.SIGTERM]
