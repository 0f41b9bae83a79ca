"""The run-directory lock: a live holder (another process) is refused by name; a provably stale lock (dead
pid on this host, a rebooted host, a silent other host) is taken over; nothing else is."""

import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_llm.runtime.run_lock import RunLock, RunLockHeld, boot_id, process_start_time

HOLDER = """
import sys
from megatron_llm.runtime.run_lock import RunLock
lock = RunLock(sys.argv[1], "training run").acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
print("released", flush=True)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock until its stdin gets a line."""
    path = tmp_path / "run" / "megatron_llm.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    yield path, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_a_live_holder_is_refused_by_name_and_released_on_exit(holder):
    path, proc = holder
    with pytest.raises(RunLockHeld) as refused:
        RunLock(path, "training run").acquire()
    assert f"pid {proc.pid} on host {socket.gethostname()}" in str(refused.value)
    assert str(path.parent) in str(refused.value)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == "released\n" and proc.wait() == 0
    assert not path.exists()
    with RunLock(path, "training run") as lock:
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.held
    assert not path.exists()


def test_a_killed_holder_leaves_a_lock_the_next_run_takes_over(holder):
    path, proc = holder
    proc.kill()
    proc.wait()
    assert json.loads(path.read_text())["pid"] == proc.pid  # SIGKILL: nothing released it
    lock = RunLock(path, "training run").acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def _plant(path, **fields) -> dict:
    record = {"host": socket.gethostname(), "boot_id": "", "pid": os.getpid(), "pid_start": None,
              "what": "training run", "started": 0.0, **fields}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return record


def test_pid_reuse_is_not_mistaken_for_the_holder(tmp_path):
    """A pid that is alive but started at another time than the recorded one is a different process."""
    path = tmp_path / "lock"
    parent = os.getppid()
    _plant(path, pid=parent, pid_start=str(int(process_start_time(parent)) + 1))
    assert RunLock(path, "x").stale_reason(json.loads(path.read_text())) == f"process {parent} is gone"
    _plant(path, pid=parent, pid_start=process_start_time(parent))
    with pytest.raises(RunLockHeld):
        RunLock(path, "x").acquire()  # negative control: the same pid with its true start time is alive


def test_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path):
    path = tmp_path / "lock"
    _plant(path, host="some-other-node", pid=1)
    lock = RunLock(path, "training run", stale_after_seconds=300)
    with pytest.raises(RunLockHeld) as refused:
        lock.acquire()
    assert "pid 1 on host some-other-node" in str(refused.value)
    old = path.stat().st_mtime - 301
    os.utime(path, (old, old))  # the holder's last heartbeat, 301 s before the file server's now
    lock.acquire()
    assert json.loads(path.read_text())["host"] == socket.gethostname()
    lock.release()


def test_a_rebooted_host_and_our_own_process_may_take_over(tmp_path):
    path = tmp_path / "lock"
    _plant(path, boot_id="not-this-boot", pid=1)
    assert RunLock(path, "x").stale_reason(json.loads(path.read_text())) == "the host rebooted since"
    _plant(path, boot_id=boot_id(), pid=os.getpid(),
           pid_start=process_start_time(os.getpid()))
    assert RunLock(path, "x").stale_reason(json.loads(path.read_text())) == "held by this process"


def test_a_half_written_lock_is_respected_until_it_is_old(tmp_path):
    path = tmp_path / "lock"
    path.write_text('{"host": "a')
    with pytest.raises(RunLockHeld):
        RunLock(path, "x", stale_after_seconds=300).acquire()
    old = path.stat().st_mtime - 301
    os.utime(path, (old, old))
    RunLock(path, "x", stale_after_seconds=300).acquire().release()
    assert not path.exists()


def test_a_read_only_directory_is_one_line(tmp_path):
    target = tmp_path / "ro"
    target.mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(target), str(target)], capture_output=True)
    assert mount.returncode == 0, mount.stderr
    try:
        with pytest.raises(Exception) as failed:
            RunLock(target / "lock", "x").acquire()
        assert str(failed.value) == f"{target / 'lock'}: cannot create the lock file (Read-only file system)"
    finally:
        subprocess.run(["umount", str(target)], check=True)
