"""The clinicians' server's token: made at start, kept where only this user can read it, found by the review page.

Every request to ``cxrkit label serve`` needs ``Authorization: Bearer TOKEN``,
also on loopback: on a shared GPU server or a hospital workstation any local
process can connect to 127.0.0.1. Unless one is given (``--token`` or
``$CXRKIT_LABEL_TOKEN``), the server makes a random token at start
(:func:`new_token`), prints it once (as Jupyter does) and writes it to a file
in a folder only this user can read (:func:`runtime_dir`, mode ``0700``; the
file ``0600``), named after the port. ``cxrkit review --server URL`` run by the
same user on the same computer finds it there (:func:`find_token`); the file is
removed when the server stops.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["RUNTIME_ENV", "TOKEN_ENV", "find_token", "new_token", "remove_token", "runtime_dir", "token_file", "write_token"]

#: the bearer token the server requires (also what ``cxrkit review`` sends).
TOKEN_ENV = "CXRKIT_LABEL_TOKEN"
#: the folder of running servers' token files (default ``$XDG_RUNTIME_DIR/cxrkit`` or ``~/.cache/cxrkit/runtime``).
RUNTIME_ENV = "CXRKIT_RUNTIME_DIR"


def new_token() -> str:
    """A random bearer token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def runtime_dir() -> Path:
    """Where running servers keep their token files: ``$CXRKIT_RUNTIME_DIR``, ``$XDG_RUNTIME_DIR/cxrkit`` or
    ``~/.cache/cxrkit/runtime``."""
    if os.environ.get(RUNTIME_ENV):
        return Path(os.environ[RUNTIME_ENV]).expanduser()
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "cxrkit"
    return Path.home() / ".cache" / "cxrkit" / "runtime"


def token_file(port: int) -> Path:
    """The token file of the server on ``port``."""
    return runtime_dir() / f"label-{int(port)}.json"


def write_token(url: str, port: int, token: str, pid: int) -> Path:
    """Write the server's URL, token and process id to :func:`token_file`, readable by this user only.

    Returns:
        The file written.
    """
    folder = runtime_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    path = token_file(port)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"url": url, "port": int(port), "token": token, "pid": int(pid)}, handle)
    os.replace(tmp, path)
    return path


def remove_token(path: Path) -> None:
    """Remove a token file (the server has stopped); no error if it is gone."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def find_token(url: str) -> str | None:
    """The token of the local server at ``url``, from its token file, if this user started it.

    Only loopback URLs are looked up, and only files owned by this user that nobody else can read.
    """
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    path = token_file(parts.port)
    try:
        status = path.stat()
        if status.st_uid != os.getuid() or status.st_mode & 0o077:
            return None
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    token = record.get("token") if isinstance(record, dict) else None
    return token if isinstance(token, str) and token else None
