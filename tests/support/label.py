"""A real MONAI Label server with cxrkit's app, for the review and label-server tests.

MONAI Label runs in its own interpreter: ``$CXRKIT_LABEL_PYTHON``, this one if it
has monailabel, or the interpreter of a ``monailabel`` script on ``PATH``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from cxrkit.label.background import BackgroundServer
from cxrkit.label.process import free_port
from support.paths import RADIOGRAPHY, shared_data

__all__ = ["call", "label_python", "free_port", "make_studies", "multipart", "LabelServer", "require_label_python"]


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


class LabelServer(BackgroundServer):
    """``monailabel start_server`` with cxrkit's app on a free loopback port serving one run folder."""

    def __init__(self, run: Path, studies: Path, workdir: Path, python: str) -> None:
        super().__init__([run], studies, workdir, python=python)


def require_label_python() -> str:
    python = label_python()
    if python is None:
        pytest.skip("MONAI Label is not installed (pip install -e '.[label]', or set CXRKIT_LABEL_PYTHON to an "
                    "interpreter that has monailabel 0.8.5)")
    return python


def call(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None,
         token: str | None = None, timeout: float = 60.0) -> tuple[int, bytes, dict]:
    """One HTTP request: ``(status, body, headers)``, errors included (4xx/5xx are answers, not exceptions)."""
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    """A ``multipart/form-data`` body and its ``Content-Type`` header."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value in fields.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, (filename, content) in files.items():
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode())
        body.write(content + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
