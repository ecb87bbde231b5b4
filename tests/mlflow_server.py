"""A real `mlflow server` process on loopback for tests: SQLite backend, local artifact root, free port.

Import the fixture into a test module (`from mlflow_server import mlflow_server_uri`) or use
`running_mlflow_server(root)` directly. The server proxies artifacts (`--artifacts-destination`), so
clients need nothing but its URL, as they would with a remote server. The process (and its workers,
all in their own process group) is terminated when the fixture ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator, Optional

import pytest

START_TIMEOUT_S = 240.0  # generous: the server imports a lot, and CI machines can be busy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running_mlflow_server(root: Path, timeout_s: float = START_TIMEOUT_S, port: Optional[int] = None) -> Iterator[str]:
    """Start `mlflow server` with its store under `root`; yield its URL once /health answers. Given the
    `root` and `port` of a server that was stopped, it is that server back (same store, same address)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]
    log = open(root / "server.log", "ab")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while not _ready(url):
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}: {(root / 'server.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow server not ready after {timeout_s:.0f} s: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the server and its workers (its own process group), killing after 5 s
    (a graceful shutdown would wait for clients' keep-alive connections)."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def mlflow_server_uri(shared_mlflow_server: str) -> Iterator[str]:
    """The session's tracking server (conftest.shared_mlflow_server); MLFLOW_TRACKING_URI points at it while the module runs."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", shared_mlflow_server)
        yield shared_mlflow_server
