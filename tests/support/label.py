"""A real MONAI Label server with cxrkit's app, for the review and label-server tests.

MONAI Label runs in its own interpreter: ``$CXRKIT_LABEL_PYTHON``, this one if it
has monailabel, or the interpreter of a ``monailabel`` script on ``PATH``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support.paths import RADIOGRAPHY, shared_data

__all__ = ["label_python", "free_port", "make_studies", "LabelServer", "require_label_python"]


def label_python() -> str | None:
    """An interpreter with monailabel installed, or ``None``."""
    candidates = [os.environ.get("CXRKIT_LABEL_PYTHON"), sys.executable]
    script = shutil.which("monailabel")
    if script:
        first = Path(script).read_bytes()[:200].split(b"\n")[0]
        if first.startswith(b"#!"):
            candidates.append(first[2:].decode().strip().split()[0])
    for python in filter(None, candidates):
        probe = subprocess.run([python, "-c", "import monailabel"], capture_output=True, timeout=60)
        if probe.returncode == 0:
            return python
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_studies(folder: Path, per_class: int = 3, dicom: bool = True) -> Path:
    """Real radiographs symlinked into a studies folder (plus the DX DICOM sample)."""
    folder.mkdir(parents=True, exist_ok=True)
    root = shared_data(*RADIOGRAPHY)
    for cls in ("COVID", "Normal"):
        for src in sorted((root / cls).glob("*.png"))[:per_class]:
            (folder / src.name).symlink_to(src)
    if dicom:
        (folder / "dx-sample.dcm").symlink_to(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"))
    return folder


class LabelServer:
    """``monailabel start_server`` with cxrkit's app on a free loopback port; stop() kills its process group."""

    def __init__(self, run: Path, studies: Path, workdir: Path, python: str) -> None:
        from cxrkit.label.server import prepare_app, server_command, server_env

        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = prepare_app(workdir / "app")
        self.cmd = server_command([run], studies, app, host="127.0.0.1", port=self.port, python=python)
        self.env = server_env(app)
        self.env["PATH"] = f"{Path(python).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.log = workdir / f"monailabel-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "LabelServer":
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MONAI Label exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/info/", timeout=2) as r:
                    json.load(r)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"MONAI Label did not answer in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = os.getpgid(self.process.pid)
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=15)


def require_label_python() -> str:
    python = label_python()
    if python is None:
        pytest.skip("MONAI Label is not installed (pip install -e '.[label]', or set CXRKIT_LABEL_PYTHON to an "
                    "interpreter that has monailabel 0.8.5)")
    return python
