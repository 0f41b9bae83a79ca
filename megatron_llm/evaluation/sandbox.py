"""Run untrusted generated code (HumanEval-style completions) in a separate, confined process.

As root (the usual container case) the program runs under `unshare --net --mount --pid --fork`: a new network
namespace (no interface but a downed loopback, so no connection anywhere), a private mount namespace where
every mount is remounted read-only except the program's own temporary directory and the directories given as
`hide` (the run directory, checkpoints) are covered by empty read-only tmpfs, and a PID namespace whose
processes all die with it. It then drops to user `nobody` (so it cannot undo the mounts, and the process-count
limit applies: root ignores RLIMIT_NPROC) and runs the base interpreter in isolated mode (`-I`), without our
virtualenv. Without root, `unshare --user --map-root-user --net` still gives the network namespace (the file
system is then confined only by permissions and the temporary directory). Where neither works, running is
refused unless `allow_unsandboxed`.

Every mode applies CPU-time, address-space, file-size and process-count limits (setrlimit) and a wall-time
limit (the whole process group is killed), and the evaluator only reads the exit status and a capped tail of
the output.
"""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from megatron_llm.errors import UsageError

NOBODY = 65534
_OUTPUT_TAIL = 4000
_CONFINE = r"""
set -e
work=$1; python=$2; shift 2
mount --make-rprivate /
mount --bind "$work" "$work"
for m in $(awk '{print $5}' /proc/self/mountinfo); do
  case "$m" in
    /proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|"$work") ;;
    *) mount -o remount,bind,ro "$m" 2>/dev/null || true;;
  esac
done
for h in "$@"; do if [ -d "$h" ]; then mount -t tmpfs -o ro,size=4k,mode=0555 tmpfs "$h"; fi; done
cd "$work"
setpriv --reuid=65534 --regid=65534 --clear-groups --no-new-privs -- "$python" -I -B program.py
"""


@dataclass
class Limits:
    cpu_seconds: int = 10
    wall_seconds: float = 20.0
    memory_bytes: int = 1 << 30
    processes: int = 32
    file_bytes: int = 16 << 20


@dataclass
class Outcome:
    status: str  # passed | failed | timeout | killed
    returncode: int | None
    output: str = ""  # tail of stdout + stderr
    detail: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _works(command: list[str]) -> bool:
    try:
        return subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@lru_cache(maxsize=1)
def sandbox_mode() -> str:
    """'namespaces' (network, mount and PID namespaces, user nobody), 'network' (a user and network
    namespace only) or 'none'."""
    if shutil.which("unshare") is None:
        return "none"
    if os.geteuid() == 0 and shutil.which("setpriv") and _works(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "true"]):
        return "namespaces"
    if _works(["unshare", "--user", "--map-root-user", "--net", "true"]):
        return "network"
    return "none"


def base_python() -> str:
    """The interpreter without our virtualenv (generated code sees only the standard library)."""
    return getattr(sys, "_base_executable", None) or sys.executable


class Sandbox:
    def __init__(self, limits: Limits | None = None, hide: list[str | Path] = (), allow_unsandboxed: bool = False,
                 mode: str | None = None) -> None:
        self.limits = limits or Limits()
        self.hide = [str(Path(h).resolve()) for h in hide]
        self.mode = mode or sandbox_mode()
        if self.mode == "none" and not allow_unsandboxed:
            raise UsageError("running generated code needs a sandbox (unshare with network namespaces) and none "
                             "is available here; pass --allow-unsandboxed to run it without one (unsafe)")

    def _limit(self) -> None:
        limits = self.limits
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def _command(self, work: Path) -> list[str]:
        if self.mode == "namespaces":
            return ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c", _CONFINE, "sh",
                    str(work), base_python(), *self.hide]
        if self.mode == "network":
            return ["unshare", "--user", "--map-root-user", "--net", base_python(), "-I", "-B", "program.py"]
        return [base_python(), "-I", "-B", "program.py"]

    def run(self, program: str) -> Outcome:
        """Run `program` (Python source) and report how it ended; never raises for what the program does."""
        with tempfile.TemporaryDirectory(prefix="mllm-sandbox-") as root:
            work = Path(root) / "work"
            work.mkdir()
            (work / "program.py").write_text(program, encoding="utf-8")
            if self.mode == "namespaces":
                os.chmod(root, 0o711)  # nobody may pass through to its directory, not list the log beside it
                os.chown(work, NOBODY, NOBODY)
            log = Path(root) / "output.log"
            env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
            with open(log, "wb") as out:
                process = subprocess.Popen(self._command(work), cwd=work, env=env, stdin=subprocess.DEVNULL,
                                           stdout=out, stderr=subprocess.STDOUT, preexec_fn=self._limit,
                                           start_new_session=True)
                try:
                    code = process.wait(timeout=self.limits.wall_seconds)
                    timed_out = False
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    try:
                        os.killpg(process.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    code = process.wait()
            with open(log, "rb") as handle:
                handle.seek(max(log.stat().st_size - _OUTPUT_TAIL, 0))
                tail = handle.read().decode("utf-8", "replace")
        if timed_out:
            return Outcome("timeout", None, tail, {"wall_seconds": self.limits.wall_seconds})
        if code == 0:
            return Outcome("passed", 0, tail)
        if code < 0 or code > 128:
            number = -code if code < 0 else code - 128
            name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
            return Outcome("killed", code, tail, {"signal": name})
        return Outcome("failed", code, tail)
