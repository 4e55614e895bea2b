"""The MONAI Label server with cxrkit's app in the background on a free loopback port (benchmarks, tests)."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from cxrkit.label.process import free_port, start_group, stop_group
from cxrkit.label.server import LabelServerError, prepare_app, server_command, server_env
from cxrkit.label.tokens import TOKEN_ENV, new_token, remove_token, write_token

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """``monailabel start_server`` with cxrkit's app in the background on a loopback port (benchmarks, tests).

    Args:
        bundles: run folders to serve.
        studies: a folder of radiographs.
        workdir: where the app's working copy and the server's log go.
        python: the interpreter with monailabel (default: this one).
        env: extra environment variables for the server (``$CXRKIT_LABEL_TOKEN`` among them sets the token).

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        token: the bearer token every request needs (random unless ``env`` gives one); while the server runs it
            is also in its token file (:func:`cxrkit.label.tokens.write_token`), where clients of this user find it.
        headers: the ``Authorization`` header with the token.
        python: the server's interpreter.
        log: the server's output.
        process: the server process (leader of its own process group).
    """

    def __init__(self, bundles: Sequence[str | os.PathLike], studies: str | os.PathLike, workdir: str | os.PathLike,
                 python: str | None = None, env: Mapping[str, str] | None = None) -> None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = prepare_app(workdir / "app")
        python = python or sys.executable
        self.cmd = server_command(list(bundles), studies, app, host="127.0.0.1", port=self.port, python=python)
        self.token = (env or {}).get(TOKEN_ENV) or new_token()
        self.env = server_env(app, token=self.token)
        self.env.update(env or {})
        self.env["PATH"] = f"{Path(python).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.headers = {"Authorization": f"Bearer {self.token}"}
        self.python = python
        self.log = workdir / f"monailabel-{self.port}.log"
        self.process = None
        self.token_file = None

    def start(self, timeout: float = 180.0) -> "BackgroundServer":
        """Start the server and wait until ``/info/`` answers.

        Raises:
            LabelServerError: the server exited or did not answer in ``timeout`` seconds (the log's end attached).
        """
        with open(self.log, "ab") as log:
            self.process = start_group(self.cmd, self.env, output=log)
        self.token_file = write_token(self.url, self.port, self.token, self.process.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabelServerError(f"MONAI Label exited ({self.process.returncode}):\n{self.tail()}")
            try:
                request = urllib.request.Request(f"{self.url}/info/", headers=self.headers)
                with urllib.request.urlopen(request, timeout=2) as answer:
                    json.load(answer)
                return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise LabelServerError(f"MONAI Label did not answer in {timeout:.0f} s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        """The end of the server's log."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def stop(self) -> None:
        """End the server's process group (SIGTERM, then SIGKILL after 15 s) and remove its token file."""
        if self.process is not None:
            stop_group(self.process, timeout=15)
        if self.token_file is not None:
            remove_token(self.token_file)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
