"""The code sandbox: generated programs that try to reach the network, write or read outside their directory,
fork without end, loop forever or exhaust memory are stopped and count as failed; the evaluator goes on.

Each escape is also run unconfined where that is harmless (a connection to our own listener, a write into a
test directory), to show the program would succeed without the sandbox (the negative control).
"""

from __future__ import annotations

import socket
import time

import psutil
import pytest

from megatron_llm.errors import UsageError
from megatron_llm.evaluation.sandbox import NOBODY, Limits, Sandbox, sandbox_mode

LIMITS = Limits(cpu_seconds=1, wall_seconds=6, memory_bytes=512 << 20, processes=16)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "secret.txt").write_text("checkpoint secrets", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def sandbox(run_dir):
    assert sandbox_mode() == "namespaces", "these tests run as root with unshare and setpriv (as CI does)"
    return Sandbox(LIMITS, hide=[run_dir])


def test_a_correct_program_passes_and_a_failing_one_fails(sandbox):
    assert sandbox.run("import math\nassert math.gcd(12, 18) == 6\nprint('ok')").status == "passed"
    failed = sandbox.run("assert 1 + 1 == 3")
    assert failed.status == "failed" and "AssertionError" in failed.output


def test_no_network(sandbox):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        port = server.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'x')\n"
        outcome = sandbox.run(program)
        assert outcome.status == "failed" and "Network is unreachable" in outcome.output
        with pytest.raises(BlockingIOError):
            server.accept()
        # Negative control: unconfined, the same program reaches the listener.
        assert Sandbox(LIMITS, mode="none", allow_unsandboxed=True).run(program).status == "passed"
        server.accept()[0].close()


def test_no_writes_outside_its_directory_and_no_view_of_the_run_directory(sandbox, run_dir, tmp_path):
    outside = tmp_path / "escaped.txt"
    for target in (run_dir / "planted.txt", outside, "/tmp/mllm-escaped.txt"):
        outcome = sandbox.run(f"open({str(target)!r}, 'w').write('x')")
        assert outcome.status == "failed", outcome.output
        assert any(e in outcome.output for e in ("Read-only file system", "Permission denied", "No such file"))
    assert not (run_dir / "planted.txt").exists() and not outside.exists()
    read = sandbox.run(f"print(open({str(run_dir / 'secret.txt')!r}).read())")
    assert read.status == "failed" and "checkpoint secrets" not in read.output
    assert sandbox.run("open('scratch.txt', 'w').write('own directory is fine')").status == "passed"
    remount = sandbox.run("import os, subprocess\nassert subprocess.run(['mount', '-o', 'remount,rw', '/']).returncode"
                          " == 0")
    assert remount.status == "failed"
    # Negative control: unconfined, the write lands.
    assert Sandbox(LIMITS, mode="none", allow_unsandboxed=True).run(
        f"open({str(outside)!r}, 'w').write('x')").status == "passed"
    assert outside.exists()


def leftover_programs(grace_s: float = 10.0) -> list[psutil.Process]:
    """The sandboxed program's processes still alive (not zombies) once `grace_s` has passed for the kill to land."""
    deadline = time.monotonic() + grace_s
    while True:
        alive = []
        for p in psutil.process_iter(["uids", "cmdline"]):
            try:
                ours = p.info["uids"] and p.info["uids"].real == NOBODY
                if ours and "program.py" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)  # a poll interval: the kill has been sent, the kernel reaps asynchronously


def test_fork_bomb_endless_loop_and_memory_hog_are_stopped(sandbox):
    bomb = sandbox.run("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    assert bomb.status in ("timeout", "killed")
    assert leftover_programs() == []
    loop = sandbox.run("while True:\n    pass\n")
    # The CPU limit (SIGXCPU) stops it, or the wall-time limit first when the machine is busy.
    assert loop.status == "timeout" or (loop.status == "killed" and loop.detail["signal"] in ("SIGXCPU", "SIGKILL"))
    hog = sandbox.run("blocks = [bytearray(64 << 20) for _ in range(64)]")
    assert hog.status in ("failed", "killed") and "MemoryError" in hog.output
    # The evaluator is still here and the sandbox still works.
    assert sandbox.run("print(1)").status == "passed"


def test_without_a_sandbox_running_is_refused_unless_allowed():
    with pytest.raises(UsageError, match="--allow-unsandboxed"):
        Sandbox(LIMITS, mode="none")
    assert Sandbox(LIMITS, mode="none", allow_unsandboxed=True).run("print(2)").status == "passed"
