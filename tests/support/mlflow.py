"""A real ``mlflow server`` on 127.0.0.1 (free port, SQLite backend, artifacts in a local folder) for the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

__all__ = ["MLflowServer", "require_mlflow"]


def require_mlflow():
    """``mlflow``, or skip the calling test with the install command."""
    return pytest.importorskip("mlflow", reason='MLflow is not installed: pip install -c constraints.txt -e ".[tracking]"')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MLflowServer:
    """``mlflow server`` in its own process group; :meth:`kill` ends it at once (a server that goes down).

    Args:
        folder: holds ``mlflow.db``, ``artifacts/`` and the server's ``server.log``.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "MLflowServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = open(self.folder / "server.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "MLFLOW_TRACKING_URI": ""}
        env.pop("MLFLOW_TRACKING_URI")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer within {timeout}s")

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri)

    def kill(self) -> None:
        """End the server and its workers now (SIGKILL to its process group)."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None) is not None:
            self.log.close()
