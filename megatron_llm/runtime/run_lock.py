"""An exclusive lock on a directory (or output prefix) for the life of one run, safe on shared file systems.

The lock is a small JSON file created with `O_CREAT | O_EXCL` (atomic on local file systems and NFSv3+),
naming its holder: host, boot id, pid and the pid's start time. While held, a daemon thread touches the
file every `heartbeat_seconds`. It is removed on release, at interpreter exit, and by the next run when it
is provably stale:

- same host (same boot id): the holder's pid is gone, or now belongs to a process started at another time;
- same host name but another boot id: the machine rebooted since;
- another host: its heartbeat is older than `stale_after_seconds`, measured on the file server's clock
  (the mtime of a probe file written now) so that clock skew between hosts does not matter.

A stale lock is taken over by renaming it aside (only one contender's rename succeeds) and checking that
the renamed file is the one judged stale. Anything else is a `RunLockHeld` (exit 2) naming the holder.
Within one process a lock may be re-acquired (e.g. a second Trainer on the same run directory in tests).
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from pathlib import Path

from megatron_llm.errors import UsageError

HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 300.0


class RunLockHeld(UsageError):
    """Another live run holds the lock."""


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    current = process_start_time(pid)
    return current is None or start is None or current == start


def _identity() -> dict:
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot_id": boot_id(), "pid": pid, "pid_start": process_start_time(pid)}


class RunLock:
    """`with RunLock(path, "training run"):` or `acquire()`/`release()`."""

    def __init__(self, path: str | os.PathLike, what: str, heartbeat_seconds: float = HEARTBEAT_SECONDS,
                 stale_after_seconds: float = STALE_AFTER_SECONDS) -> None:
        self.path = Path(path)
        self.what = what
        self.heartbeat_seconds = heartbeat_seconds
        self.stale_after_seconds = stale_after_seconds
        self._record: dict | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        return self._record is not None

    def acquire(self) -> RunLock:
        """Take the lock, taking over a provably stale one; RunLockHeld when a live run holds it."""
        if self.held:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.path.parent}: cannot create ({exc.strerror})") from None
        record = {**_identity(), "what": self.what, "started": time.time()}
        for _ in range(5):
            if self._create(record):
                self._record = record
                self._start_heartbeat()
                atexit.register(self.release)
                return self
            holder = self.read_holder()
            reason = self.stale_reason(holder)
            if reason is None:
                raise RunLockHeld(self.describe_holder(holder))
            self._take_over(holder)
        raise RunLockHeld(f"{self.path}: could not take the lock (other runs keep taking it)")

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None
        if self._record is None:
            return
        if self.read_holder() == self._record:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self._record = None
        atexit.unregister(self.release)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _create(self, record: dict) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot create the lock file ({exc.strerror})") from None
        with os.fdopen(fd, "w") as stream:
            stream.write(json.dumps(record, sort_keys=True))
            stream.flush()
            os.fsync(stream.fileno())
        return True

    def read_holder(self) -> dict | None:
        """The lock's content; {} when it exists but is unreadable; None when there is no lock."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return holder if isinstance(holder, dict) else {}

    def heartbeat_age(self) -> float | None:
        """Seconds since the holder's last heartbeat, on the file server's clock."""
        probe = self.path.with_name(f".{self.path.name}.probe.{socket.gethostname()}.{os.getpid()}")
        try:
            lock_mtime = self.path.stat().st_mtime
            probe.write_bytes(b"")
            now = probe.stat().st_mtime
        except OSError:
            return None
        finally:
            probe.unlink(missing_ok=True)
        return max(now - lock_mtime, 0.0)

    def stale_reason(self, holder: dict | None) -> str | None:
        """Why the lock can be taken over, or None while its holder may be alive."""
        if holder is None:
            return "gone"
        me = _identity()
        age = self.heartbeat_age()
        if not holder.get("pid"):
            old = age is not None and age > self.stale_after_seconds
            return "unreadable lock file with no heartbeat" if old else None
        if holder.get("host") == me["host"]:
            if holder.get("boot_id") and holder.get("boot_id") != me["boot_id"]:
                return "the host rebooted since"
            same_process = holder.get("pid") == me["pid"] and holder.get("pid_start") == me["pid_start"]
            if same_process:
                return "held by this process"
            if not _pid_alive(int(holder["pid"]), holder.get("pid_start")):
                return f"process {holder['pid']} is gone"
            return None
        if age is not None and age > self.stale_after_seconds:
            return f"no heartbeat for {age:.0f} s"
        return None

    def _take_over(self, holder: dict | None) -> None:
        if holder is None:
            return
        aside = self.path.with_name(f".{self.path.name}.stale.{socket.gethostname()}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another contender moved it first
        try:
            moved = json.loads(aside.read_text())
        except (OSError, json.JSONDecodeError):
            moved = {}
        if moved != holder and moved:
            # A live lock created after we read the stale one: put it back (only if the name is still free).
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink(missing_ok=True)

    def describe_holder(self, holder: dict | None) -> str:
        holder = holder or {}
        started = holder.get("started")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "an unknown time"
        age = self.heartbeat_age()
        beat = f", last heartbeat {age:.0f} s ago" if age is not None else ""
        who = f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}"
        return (f"{self.path.parent}: in use by another {holder.get('what', self.what)} ({who}, started "
                f"{since}{beat}); wait for it to finish or use another directory (lock file {self.path})")

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            if self.read_holder() != self._record:
                print(f"warning: {self.path} was taken over by another run", flush=True)
                return
            try:
                os.utime(self.path)
            except OSError:
                pass
