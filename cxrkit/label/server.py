"""Start MONAI Label with cxrkit's app: the command line, its environment, and a working copy of the app.

``monailabel start_server`` writes into the app folder (``logs/``, ``model/``,
``bin/``), so :func:`prepare_app` copies the app shipped in
:data:`cxrkit.label.APP_DIR` into a working folder (default
``$CXRKIT_LABEL_APP_DIR`` or ``~/.cache/cxrkit/label-app``) and the server runs
from there. :func:`server_command` and :func:`server_env` give the exact
command and environment (``cxrkit label serve --dry-run`` prints them).

The server runs MONAI Label's FastAPI app behind cxrkit's guard
(:mod:`cxrkit.label.asgi`, passed as ``--uvicorn_app``): requests whose
``Host`` header does not name this server are refused (DNS rebinding), and
with a token (``token=`` / ``--token`` / ``$CXRKIT_LABEL_TOKEN``) every request
needs ``Authorization: Bearer TOKEN``. Binding beyond loopback needs
``allow_remote=True`` (``--allow_remote``); :func:`exposure` says what is then
exposed. uvicorn closes idle keep-alive connections after 5 s (its default,
which MONAI Label keeps) and answers 503 beyond ``limit_concurrency``
connections; neither has a request-read timeout, so :mod:`cxrkit.label.timeouts`
adds one (``request_timeout``, ``$CXRKIT_LABEL_REQUEST_TIMEOUT``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

from cxrkit.label import APP_DIR
from cxrkit.label.timeouts import TIMEOUT_ENV
from cxrkit.serve.guard import allowed_host_names, is_loopback, normalise_origin

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "ALLOWED_ORIGINS_ENV",
    "BackgroundServer",
    "ASGI_APP",
    "DATASTORE_EXTENSIONS",
    "ExposureError",
    "LIMIT_CONCURRENCY",
    "LabelServerError",
    "TOKEN_ENV",
    "check_exposure",
    "default_app_dir",
    "exposure",
    "free_port",
    "listed",
    "monailabel_available",
    "prepare_app",
    "serve",
    "server_command",
    "server_env",
]

logger = logging.getLogger(__name__)

#: files of a studies folder the server lists (MONAI_LABEL_DATASTORE_FILE_EXT).
DATASTORE_EXTENSIONS = ("*.png", "*.jpg", "*.jpeg", "*.dcm", "*.nii.gz", "*.nii")
#: the bearer token the server requires (also what ``cxrkit review`` sends).
TOKEN_ENV = "CXRKIT_LABEL_TOKEN"
#: comma-separated host names the server answers (set by :func:`server_env`).
ALLOWED_HOSTS_ENV = "CXRKIT_LABEL_ALLOWED_HOSTS"
#: comma-separated web origins besides the server's own whose browser requests are answered.
ALLOWED_ORIGINS_ENV = "CXRKIT_LABEL_ALLOWED_ORIGINS"
#: the ASGI app uvicorn serves: MONAI Label's app behind cxrkit's guard.
ASGI_APP = "cxrkit.label.asgi:app"
#: connections and requests uvicorn serves at once before answering 503.
LIMIT_CONCURRENCY = 128
_APP_FILES = ("__init__.py", "main.py", "lib")


class LabelServerError(RuntimeError):
    """The server cannot be started as asked; the message says why and what to do."""


class ExposureError(LabelServerError):
    """A host other computers can reach, without ``allow_remote``."""


def monailabel_available() -> bool:
    """Whether MONAI Label is installed here (``pip install -e ".[label]"``)."""
    import importlib.util

    return importlib.util.find_spec("monailabel") is not None


def default_app_dir() -> Path:
    """The app's working folder: ``$CXRKIT_LABEL_APP_DIR`` or ``~/.cache/cxrkit/label-app``."""
    env = os.environ.get("CXRKIT_LABEL_APP_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxrkit" / "label-app"


def prepare_app(workdir: str | os.PathLike | None = None) -> Path:
    """Copy cxrkit's MONAI Label app (``main.py``, ``lib/``) into ``workdir``, replacing older copies.

    The working folder's ``model/`` and ``logs/`` are kept.

    Args:
        workdir: where the server runs the app (default :func:`default_app_dir`).

    Returns:
        The app folder to pass to ``monailabel start_server --app``.
    """
    target = Path(workdir).expanduser().resolve() if workdir else default_app_dir().resolve()
    if target == APP_DIR.resolve():
        return target
    target.mkdir(parents=True, exist_ok=True)
    for name in _APP_FILES:
        src, dst = APP_DIR / name, target / name
        if src.is_dir():
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dst)
    (target / "model").mkdir(exist_ok=True)
    return target


def server_command(
    bundles: Sequence[str | os.PathLike],
    studies: str | os.PathLike,
    app: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    models: Sequence[str] = (),
    python: str | None = None,
    extra_conf: Mapping[str, str] | None = None,
    limit_concurrency: int | None = LIMIT_CONCURRENCY,
) -> list[str]:
    """The ``monailabel start_server`` command line serving ``bundles``.

    Args:
        bundles: run folders (``--conf bundles``).
        studies: a folder of radiographs, or a DICOMweb URL.
        app: the app folder (see :func:`prepare_app`).
        host: interface to listen on (loopback by default).
        port: TCP port.
        models: names of bundles under the app's ``model/`` folder (``--conf models``).
        python: the interpreter (default: this one, so the server sees the same packages).
        extra_conf: more ``--conf key value`` pairs.
        limit_concurrency: connections and requests served at once; more get 503 (None: no limit).

    Returns:
        The argument list (``python -m monailabel.main start_server ...``).

    Raises:
        LabelServerError: nothing to serve, a bundle path that is not a folder, or a bad port.
    """
    if not bundles and not models:
        raise LabelServerError("nothing to serve: give at least one run folder")
    if not 0 < int(port) < 65536:
        raise LabelServerError(f"--port must be 1-65535, got {port}")
    paths = []
    for bundle in bundles:
        path = Path(bundle).expanduser().resolve()
        if not path.is_dir():
            raise LabelServerError(f"{bundle}: no such run folder")
        if "," in str(path):
            raise LabelServerError(f"{path}: a path with a comma cannot be passed to --conf bundles; link it elsewhere")
        paths.append(str(path))
    studies_arg = str(studies)
    if not studies_arg.startswith(("http://", "https://")):
        studies_path = Path(studies).expanduser()
        if not studies_path.is_dir():
            raise LabelServerError(
                f"--studies {studies}: no such folder (a folder of PNG/JPEG/DICOM files, or a DICOMweb URL)"
            )
        studies_arg = str(studies_path.resolve())
    cmd = [python or sys.executable, "-m", "monailabel.main", "start_server",
           "--app", str(app), "--studies", studies_arg, "--host", host, "--port", str(int(port)),
           "--uvicorn_app", ASGI_APP, "--conf", "zoo_source", "github"]
    if limit_concurrency:
        cmd += ["--limit_concurrency", str(int(limit_concurrency))]
    if paths:
        cmd += ["--conf", "bundles", ",".join(paths)]
    if models:
        cmd += ["--conf", "models", ",".join(models)]
    for key, value in (extra_conf or {}).items():
        cmd += ["--conf", str(key), str(value)]
    return cmd


def listed(value: str | None) -> list[str]:
    """The entries of a comma-separated environment value (``$CXRKIT_LABEL_ALLOWED_HOSTS``...), blanks dropped."""
    return [entry.strip() for entry in (value or "").split(",") if entry.strip()]


def server_env(app: str | os.PathLike, base: Mapping[str, str] | None = None, *, host: str = "127.0.0.1",
               token: str | None = None, origins: Sequence[str] = (), hosts: Sequence[str] = (),
               request_timeout: float | None = None) -> dict[str, str]:
    """The environment for the server: radiograph file types listed, sessions kept in the app folder,
    the host names to answer (:data:`ALLOWED_HOSTS_ENV`), the other web origins to answer
    (:data:`ALLOWED_ORIGINS_ENV`) and the token (:data:`TOKEN_ENV`).

    Values already set in ``base`` (default ``os.environ``) win, except the host names, which follow ``host``
    (and ``hosts``, more names such as a reverse proxy's), the origins, which ``origins`` joins, and the token
    and the request timeout (:data:`cxrkit.label.timeouts.TIMEOUT_ENV`), which ``token`` and
    ``request_timeout`` replace when given.

    Raises:
        LabelServerError: an entry of ``origins`` is not an http(s) origin.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("MONAI_LABEL_DATASTORE_FILE_EXT", json.dumps(list(DATASTORE_EXTENSIONS)))
    env.setdefault("MONAI_LABEL_SESSION_PATH", str(Path(app) / "sessions"))
    env[ALLOWED_HOSTS_ENV] = ",".join(sorted(allowed_host_names(host, hosts)))
    try:
        given = [normalise_origin(o) for o in [*listed(env.get(ALLOWED_ORIGINS_ENV)), *origins]]
    except ValueError as exc:
        raise LabelServerError(f"--allow_origin: {exc}") from None
    env[ALLOWED_ORIGINS_ENV] = ",".join(dict.fromkeys(given))
    if token:
        env[TOKEN_ENV] = token
    if request_timeout is not None:
        env[TIMEOUT_ENV] = f"{float(request_timeout):g}"
    return env


def check_exposure(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback ``host`` unless ``allow_remote``.

    Raises:
        ExposureError: the message says what would be exposed and how to allow it.
    """
    if is_loopback(host) or allow_remote:
        return
    raise ExposureError(
        f"--host {host} would let other computers reach this MONAI Label server: list and download every "
        "radiograph of --studies, run the served models and read their predictions and Grad-CAM maps, and write "
        "labels into the datastore. Pass --allow_remote (allow_remote=True) to do that, with --token TOKEN (or "
        f"${TOKEN_ENV}) so that every request needs 'Authorization: Bearer TOKEN' (see docs/clinician-review.md, "
        "'Security'); or leave --host at 127.0.0.1."
    )


def exposure(host: str, port: int, studies: str | os.PathLike, models: Sequence[str], token: bool) -> str:
    """What a server bound to ``host`` exposes, in words (printed by ``cxrkit label serve``)."""
    where = "this computer only" if is_loopback(host) else "every computer that can reach this one"
    guard = ("every request needs 'Authorization: Bearer TOKEN'" if token else
             "WITHOUT authentication (pass --token or set $" + TOKEN_ENV + ")")
    text = (f"MONAI Label on {host}:{port}, reachable from {where}: the radiographs of {studies} (list, download), "
            f"the models {', '.join(models) or '-'} (predictions, Grad-CAM) and writing labels into the "
            f"datastore; {guard}.")
    if not is_loopback(host):
        text += " Traffic is plain HTTP: use a trusted network or an HTTPS reverse proxy."
    return text


def serve(
    bundles: Sequence[str | os.PathLike],
    studies: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8000,
    app_dir: str | os.PathLike | None = None,
    models: Sequence[str] = (),
    *,
    allow_remote: bool = False,
    token: str | None = None,
    origins: Sequence[str] = (),
    hosts: Sequence[str] = (),
    request_timeout: float | None = None,
) -> int:
    """Run the MONAI Label server in the foreground until it stops (Ctrl-C).

    Args:
        bundles: run folders to serve.
        studies: a folder of radiographs, or a DICOMweb URL.
        host: interface to listen on; anything but loopback needs ``allow_remote``.
        port: TCP port.
        app_dir: working copy of the app (default :func:`default_app_dir`).
        models: names of bundles under the app's ``model/`` folder.
        allow_remote: allow a ``host`` other computers can reach.
        token: bearer token every request must carry (default ``$CXRKIT_LABEL_TOKEN``; None: none).
        origins: web origins besides the server's own whose browser requests are answered (a web viewer).
        hosts: more host names to answer to (a reverse proxy's public name).
        request_timeout: seconds a request head, and its body, may take to arrive (default 30).

    Returns:
        The server's exit code.

    Raises:
        LabelServerError: MONAI Label is not installed, a non-loopback host without
            ``allow_remote``, or bad arguments.
    """
    check_exposure(host, allow_remote)
    if not monailabel_available():
        raise LabelServerError(
            "MONAI Label is not installed in this environment; install the extra with "
            '`pip install -e ".[label]"` (monailabel 0.8.5 with pydicom 2.4.4)'
        )
    app = prepare_app(app_dir)
    cmd = server_command(bundles, studies, app, host=host, port=port, models=models)
    env = server_env(app, host=host, token=token, origins=origins, hosts=hosts, request_timeout=request_timeout)
    logger.info("starting: %s", " ".join(cmd))
    process = subprocess.Popen(cmd, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            return process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def free_port() -> int:
    """A TCP port free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BackgroundServer:
    """``monailabel start_server`` with cxrkit's app in the background on a loopback port (benchmarks, tests).

    Args:
        bundles: run folders to serve.
        studies: a folder of radiographs.
        workdir: where the app's working copy and the server's log go.
        python: the interpreter with monailabel (default: this one).
        env: extra environment variables for the server.

    Attributes:
        url: ``http://127.0.0.1:PORT``.
        python: the server's interpreter.
        log: the server's output.
        process: the server process (its own process group).
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
        self.env = server_env(app)
        self.env.update(env or {})
        self.env["PATH"] = f"{Path(python).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.python = python
        self.log = workdir / f"monailabel-{self.port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "BackgroundServer":
        """Start the server and wait until ``/info/`` answers.

        Raises:
            LabelServerError: the server exited or did not answer in ``timeout`` seconds (the log's end attached).
        """
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LabelServerError(f"MONAI Label exited ({self.process.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/info/", timeout=2) as answer:
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
        """End the server's process group (SIGTERM, then SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        group = os.getpgid(self.process.pid)
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __enter__(self) -> "BackgroundServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
