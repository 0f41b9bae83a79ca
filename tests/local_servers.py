"""Real servers on 127.0.0.1 for tests: an S3 endpoint (moto in server mode) and an MLflow tracking server.

Each is started on a free port, waited for by polling its port (bounded), and killed by its process id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, limit_s: float = 600.0) -> None:
    """Poll until the port accepts connections; fail when the server exits or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            sock.settimeout(1.0)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)  # a poll interval, not synchronisation: readiness is the open port
    raise RuntimeError(f"server not listening on 127.0.0.1:{port} after {limit_s} s")


@contextmanager
def server(cmd: list[str], port: int, log: Path) -> Iterator[str]:
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the server and the workers it forked
        proc.wait()


S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def s3_endpoint(workdir: Path) -> Iterator[str]:
    """moto's S3 in server mode; yields its URL (set AWS_ENDPOINT_URL to it, with S3_ENV's credentials)."""
    port = free_port()
    with server([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], port, workdir / "moto.log") as url:
        yield url


@contextmanager
def mlflow_server(workdir: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite store and a local artifact directory; yields its URL."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
           "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
           "--default-artifact-root", str(workdir / "artifacts")]
    with server(cmd, port, workdir / "mlflow.log") as url:
        yield url
