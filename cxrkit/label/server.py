"""Start MONAI Label with cxrkit's app: the command line, its environment, and a working copy of the app.

``monailabel start_server`` writes into the app folder (``logs/``, ``model/``,
``bin/``), so :func:`prepare_app` copies the app shipped in
:data:`cxrkit.label.APP_DIR` into a working folder (default
``$CXRKIT_LABEL_APP_DIR`` or ``~/.cache/cxrkit/label-app``) and the server runs
from there. :func:`server_command` and :func:`server_env` give the exact
command and environment (``cxrkit label serve --dry-run`` prints them).

The server runs MONAI Label's FastAPI app behind cxrkit's guard
(:mod:`cxrkit.label.asgi`, passed as ``--uvicorn_app``): requests whose
``Host`` header does not name this server and its port are refused (DNS
rebinding), every request needs ``Authorization: Bearer TOKEN`` (``--token``,
``$CXRKIT_LABEL_TOKEN``, or a random token made at start, see
:mod:`cxrkit.label.tokens`), only the routes review needs are open
(:mod:`cxrkit.label.routes`; ``--allow_admin`` opens the rest to token
holders), and request bodies are limited in size (``--max_body_mb``).
Binding beyond loopback needs ``allow_remote=True`` (``--allow_remote``);
:func:`exposure` says what is then exposed. SIGINT, SIGTERM and SIGHUP stop
MONAI Label's whole process group (:mod:`cxrkit.label.process`). uvicorn closes idle keep-alive connections after 5 s (its default,
which MONAI Label keeps) and answers 503 beyond ``limit_concurrency``
connections; neither has a request-read timeout, so :mod:`cxrkit.label.timeouts`
adds one (``request_timeout``, ``$CXRKIT_LABEL_REQUEST_TIMEOUT``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Mapping, Sequence

from cxrkit.label import APP_DIR
from cxrkit.label.process import Stopped, start_group, stop_group, stop_signals
from cxrkit.label.routes import ADMIN_ENV
from cxrkit.label.timeouts import TIMEOUT_ENV
from cxrkit.label.tokens import TOKEN_ENV, new_token, remove_token, write_token
from cxrkit.serve.guard import allowed_host_names, is_loopback, normalise_origin

__all__ = [
    "ALLOWED_HOSTS_ENV",
    "ALLOWED_ORIGINS_ENV",
    "ASGI_APP",
    "DATASTORE_EXTENSIONS",
    "DEFAULT_MAX_BODY_MB",
    "ExposureError",
    "LIMIT_CONCURRENCY",
    "LabelServerError",
    "MAX_BODY_ENV",
    "PROXY_HOSTS_ENV",
    "TOKEN_ENV",
    "check_exposure",
    "default_app_dir",
    "exposure",
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
#: comma-separated host names the server answers on its own port (set by :func:`server_env`).
ALLOWED_HOSTS_ENV = "CXRKIT_LABEL_ALLOWED_HOSTS"
#: comma-separated host names of a reverse proxy in front, answered on any port (``--allow_host``).
PROXY_HOSTS_ENV = "CXRKIT_LABEL_PROXY_HOSTS"
#: the largest request body in MiB (``--max_body_mb``).
MAX_BODY_ENV = "CXRKIT_LABEL_MAX_BODY_MB"
#: default body limit: one radiograph of any format (a 4k x 4k 16-bit DICOM is 32 MiB) with room to spare.
DEFAULT_MAX_BODY_MB = 64.0
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
               request_timeout: float | None = None, allow_admin: bool = False,
               max_body_mb: float | None = None) -> dict[str, str]:
    """The environment for the server: radiograph file types listed, sessions kept in the app folder,
    the host names to answer (:data:`ALLOWED_HOSTS_ENV`), the other web origins to answer
    (:data:`ALLOWED_ORIGINS_ENV`) and the token (:data:`TOKEN_ENV`).

    Values already set in ``base`` (default ``os.environ``) win, except the host names, which follow ``host``
    (and ``hosts``, a reverse proxy's names, :data:`PROXY_HOSTS_ENV`), the origins, which ``origins`` joins,
    the token, the request timeout (:data:`cxrkit.label.timeouts.TIMEOUT_ENV`) and the body limit
    (:data:`MAX_BODY_ENV`), which ``token``, ``request_timeout`` and ``max_body_mb`` replace when given, and the
    admin switch (:data:`cxrkit.label.routes.ADMIN_ENV`), which ``allow_admin`` sets: ``1`` or ``0``.

    Raises:
        LabelServerError: an entry of ``origins`` is not an http(s) origin.
    """
    env = dict(os.environ if base is None else base)
    env.setdefault("MONAI_LABEL_DATASTORE_FILE_EXT", json.dumps(list(DATASTORE_EXTENSIONS)))
    env.setdefault("MONAI_LABEL_SESSION_PATH", str(Path(app) / "sessions"))
    env[ALLOWED_HOSTS_ENV] = ",".join(sorted(allowed_host_names(host)))
    env[PROXY_HOSTS_ENV] = ",".join(sorted({h.strip("[]").lower() for h in hosts if h}))
    env[ADMIN_ENV] = "1" if allow_admin else "0"
    try:
        given = [normalise_origin(o) for o in [*listed(env.get(ALLOWED_ORIGINS_ENV)), *origins]]
    except ValueError as exc:
        raise LabelServerError(f"--allow_origin: {exc}") from None
    env[ALLOWED_ORIGINS_ENV] = ",".join(dict.fromkeys(given))
    if token:
        env[TOKEN_ENV] = token
    if request_timeout is not None:
        env[TIMEOUT_ENV] = f"{float(request_timeout):g}"
    if max_body_mb is not None:
        env[MAX_BODY_ENV] = f"{float(max_body_mb):g}"
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
        "review labels into the datastore (with its token). Pass --allow_remote (allow_remote=True) to do that; "
        "a random token is made unless --token TOKEN (or $" + TOKEN_ENV + ") gives one (see "
        "docs/clinician-review.md, 'Security'); or leave --host at 127.0.0.1."
    )


def exposure(host: str, port: int, studies: str | os.PathLike, models: Sequence[str], *,
             allow_admin: bool = False) -> str:
    """What a server bound to ``host`` exposes, in words (printed by ``cxrkit label serve``)."""
    where = "this computer only" if is_loopback(host) else "every computer that can reach this one"
    text = (f"MONAI Label on {host}:{port}, reachable from {where}, to holders of its token only (every request "
            f"needs 'Authorization: Bearer TOKEN'): the radiographs of {studies} (list, download), the models "
            f"{', '.join(models) or '-'} (predictions, Grad-CAM) and saving review labels into the datastore")
    text += ("; --allow_admin: also every other MONAI Label route (model upload and delete, training, datastore "
             "uploads, ...)." if allow_admin else "; nothing else (no model upload, training or datastore upload).")
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
    allow_admin: bool = False,
    max_body_mb: float | None = None,
) -> int:
    """Run the MONAI Label server in the foreground until it stops, or a stop signal ends it.

    SIGINT (Ctrl-C), SIGTERM and SIGHUP stop MONAI Label's whole process group and wait for it. While the server
    runs, its URL and token are in a file only this user can read (:func:`cxrkit.label.tokens.write_token`),
    where ``cxrkit review`` finds the token.

    Args:
        bundles: run folders to serve.
        studies: a folder of radiographs, or a DICOMweb URL.
        host: interface to listen on; anything but loopback needs ``allow_remote``.
        port: TCP port.
        app_dir: working copy of the app (default :func:`default_app_dir`).
        models: names of bundles under the app's ``model/`` folder.
        allow_remote: allow a ``host`` other computers can reach.
        token: bearer token every request must carry (default ``$CXRKIT_LABEL_TOKEN``, else a random one, logged).
        origins: web origins besides the server's own whose browser requests are answered (a web viewer).
        hosts: host names of a reverse proxy in front (answered on any port).
        request_timeout: seconds a request head, and its body, may take to arrive (default 30).
        allow_admin: open MONAI Label's routes beyond review (model upload and delete, training, ...).
        max_body_mb: the largest request body in MiB (default :data:`DEFAULT_MAX_BODY_MB`).

    Returns:
        The server's exit code (0 after a stop signal).

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
    if token is None:
        token = os.environ.get(TOKEN_ENV) or new_token()
        logger.warning("token of this server: %s", token)
    app = prepare_app(app_dir)
    cmd = server_command(bundles, studies, app, host=host, port=port, models=models)
    env = server_env(app, host=host, token=token, origins=origins, hosts=hosts, request_timeout=request_timeout,
                     allow_admin=allow_admin, max_body_mb=max_body_mb)
    logger.info("starting: %s", " ".join(cmd))
    with stop_signals():
        process = start_group(cmd, env)
        token_path = write_token(f"http://{f'[{host}]' if ':' in host else host}:{port}", port, token, process.pid)
        try:
            return process.wait()
        except Stopped as stop:
            logger.info("%s: stopping MONAI Label", stop)
            return 0
        finally:  # a stop signal, an error or the server's own exit: no process of its group is left
            stop_group(process)
            remove_token(token_path)
