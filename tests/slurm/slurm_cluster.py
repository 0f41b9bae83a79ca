"""A real single-node SLURM cluster on 127.0.0.1 for the tests: Debian's packages, our own daemons.

Installs `slurmctld slurmd slurm-client munge` with apt-get when they are missing, then starts munged,
slurmctld and slurmd with every file (key, socket, config, state, spool, logs, pid files) under one
directory, and stops them by the pids they wrote. Anything that cannot be had raises ClusterError with
the reason, so the tests fail loudly instead of skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo", "munged", "munge")
PORTS = (6817, 6818)


class ClusterError(RuntimeError):
    """SLURM could not be installed or started; the message says why."""


def _run(cmd: list[str], timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def ensure_installed(packages: tuple[str, ...] = PACKAGES, binaries: tuple[str, ...] = BINARIES) -> None:
    """apt-get install `packages` (default: SLURM and munge) unless every one of `binaries` is on PATH."""
    if all(shutil.which(name) for name in binaries):
        return
    if shutil.which("apt-get") is None:
        raise ClusterError(f"{' '.join(binaries)} missing and apt-get is not available to install "
                           f"{' '.join(packages)}: the SLURM tests need a Debian machine")
    if os.geteuid() != 0:
        raise ClusterError(f"{' '.join(binaries)} missing and installing {' '.join(packages)} with apt-get needs root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    steps = [["apt-get", *lock, "update"],
             ["apt-get", *lock, "install", "-y", "--no-install-recommends", *packages]]
    for cmd in steps:
        result = _run(cmd, timeout=900, env=env)
        if result.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n"
                               f"{_tail(result.stdout + result.stderr)}")
    missing = [name for name in binaries if shutil.which(name) is None]
    if missing:
        raise ClusterError(f"after installing {' '.join(packages)}, still missing: {' '.join(missing)}")


def _ports_in_use() -> list[int]:
    busy = []
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


def _wait_for(predicate, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    detail = f"\n{log}:\n{_tail(log.read_text(errors='replace'))}" if log is not None and log.exists() else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False


def munge_works(socket_path: Path) -> bool:
    """Whether munged on `socket_path` encodes and decodes a credential."""
    encoded = _run(["munge", "-n", f"--socket={socket_path}"], timeout=10)
    if encoded.returncode != 0:
        return False
    decoded = subprocess.run(["unmunge", f"--socket={socket_path}"], input=encoded.stdout,
                             capture_output=True, text=True, timeout=10)
    return decoded.returncode == 0


def start_munged(munge_dir: Path) -> Path:
    """munged with a fresh key, its socket, pid file (munged.pid) and log in `munge_dir`; returns the socket."""
    munge_dir.mkdir(parents=True, exist_ok=True)
    munge_dir.chmod(0o700)
    key = munge_dir / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    socket_path = munge_dir / "munge.socket"
    # munged runs as the test's own user: the temp directory is private to it (mode 0700), and --force
    # lets munged run as root, which the packaged daemon would refuse.
    cmd = ["munged", f"--socket={socket_path}", f"--key-file={key}",
           f"--pid-file={munge_dir / 'munged.pid'}", f"--log-file={munge_dir / 'munged.log'}",
           f"--seed-file={munge_dir / 'munged.seed'}", "--force"]
    result = _run(cmd)
    if result.returncode != 0:
        raise ClusterError(f"munged failed to start (exit {result.returncode}): {_tail(result.stderr)}")
    _wait_for(lambda: munge_works(socket_path), 20, "munged to answer", munge_dir / "munged.log")
    return socket_path


def stop_by_pid_file(pid_file: Path, grace: float = 20) -> None:
    """SIGTERM the daemon whose pid `pid_file` holds, SIGKILL it after `grace` seconds."""
    pid = _read_pid(pid_file)
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


SLURM_CONF = """\
ClusterName=megatron-llm-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket},cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
InactiveLimit=0
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=8000 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    """munged + slurmctld + slurmd on 127.0.0.1, all state under `root`."""

    root: Path
    host: str = field(default_factory=lambda: socket.gethostname().split(".")[0])

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """What a client command (sbatch, squeue, ...) needs to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def start(self) -> None:
        busy = _ports_in_use()
        if busy:
            raise ClusterError(f"ports {busy} on 127.0.0.1 are taken (another slurmctld/slurmd running?); "
                               "stop it before running the SLURM tests")
        self._start_munge()
        for name in ("state", "spool"):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(SLURM_CONF.format(host=self.host, root=self.root, munge_socket=self.munge_socket))
        env = dict(os.environ, **self.env)
        for cmd, log in ((["slurmctld", "-f", str(self.conf)], "slurmctld.log"),
                         (["slurmd", "-f", str(self.conf), "-N", self.host], "slurmd.log")):
            result = _run(cmd, env=env)
            if result.returncode != 0:
                raise ClusterError(f"`{' '.join(cmd)}` failed (exit {result.returncode}): "
                                   f"{_tail(result.stdout + result.stderr)}")
            pid_file = self.root / f"{cmd[0]}.pid"
            _wait_for(lambda p=pid_file: _read_pid(p) is not None, 30, f"{cmd[0]} to write its pid file",
                      self.root / log)
        _wait_for(self._node_idle, 60, f"node {self.host} to become idle", self.root / "slurmd.log")

    def _start_munge(self) -> None:
        start_munged(self.root / "munge")

    def _node_idle(self) -> bool:
        result = _run(["sinfo", "-h", "-n", self.host, "-o", "%T"], timeout=10, env=dict(os.environ, **self.env))
        return result.returncode == 0 and result.stdout.strip() == "idle"

    def job_processes(self) -> list[psutil.Process]:
        """Processes of this cluster's jobs (batch scripts, srun, tasks): their environment names our config."""
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("SLURM_CONF") == str(self.conf) and "SLURM_JOB_ID" in proc.environ():
                    found.append(proc)
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return found

    def cancel_jobs(self) -> None:
        """Cancel every job, wait for the queue to empty, then SIGKILL (by pid) what the jobs left behind,
        e.g. a helper process orphaned when a test killed its parent task."""
        if _read_pid(self.root / "slurmctld.pid") is None:
            return
        env = dict(os.environ, **self.env)
        _run(["scancel", "--user", str(os.getuid())], env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not self._queue_empty(env):
            time.sleep(0.2)
        remaining = self.job_processes()
        deadline = time.monotonic() + 5
        while remaining and time.monotonic() < deadline:
            time.sleep(0.2)
            remaining = [proc for proc in remaining if _alive(proc.pid)]
        for proc in remaining:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()

    def _queue_empty(self, env: dict) -> bool:
        result = _run(["squeue", "-h", "-o", "%i"], timeout=10, env=env)
        return result.returncode != 0 or not result.stdout.strip()

    def stop(self) -> None:
        """Cancel the jobs, then stop slurmd, slurmctld and munged by the pids they wrote (SIGKILL after 20 s)."""
        self.cancel_jobs()
        for pid_file in (self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"):
            stop_by_pid_file(pid_file)
