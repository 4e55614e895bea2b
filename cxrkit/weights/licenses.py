"""Licences the user has accepted, recorded once in cxrkit's config folder.

A weight source whose licence restricts use (``license_restricted=True``:
non-commercial, research only, gated, terms to accept) is fetched only when the
user says so: ``cxrkit weights fetch NAME --accept_license``. That acceptance is
recorded in ``<config>/licenses.json`` (``<config>`` = ``$CXRKIT_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/cxrkit``, else ``~/.config/cxrkit``) with the licence's name,
so later fetches of the same source under the same licence need no option; a
source whose licence changes must be accepted again. Torch-free.
"""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from cxrkit.weights.errors import WeightError
from cxrkit.weights.source import WeightSource

__all__ = ["CONFIG_DIR_ENV", "config_dir", "licenses_file", "is_accepted", "record_acceptance", "license_text"]

CONFIG_DIR_ENV = "CXRKIT_CONFIG_DIR"


def config_dir() -> Path:
    """cxrkit's config folder (created on first write)."""
    env = os.environ.get(CONFIG_DIR_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME", "").strip()
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "cxrkit"


def licenses_file() -> Path:
    return config_dir() / "licenses.json"


def _read() -> dict[str, dict[str, str]]:
    path = licenses_file()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WeightError(f"{path}: not a readable licence record ({exc}); fix or delete it") from None
    return data if isinstance(data, dict) else {}


def is_accepted(source: WeightSource) -> bool:
    """Whether the user accepted ``source``'s current licence before (unrestricted sources: always)."""
    if not source.license_restricted:
        return True
    entry = _read().get(source.name)
    return isinstance(entry, dict) and entry.get("license") == source.license


def record_acceptance(source: WeightSource) -> Path:
    """Record that the user accepted ``source``'s licence (atomic write); returns the record's path."""
    data = _read()
    data[source.name] = {"license": source.license,
                         "accepted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    path = licenses_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".licenses.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def license_text(source: WeightSource) -> str:
    """The licence as shown in ``weights list`` / ``info``: ``"CC-BY-NC-4.0 (restricted)"``, ``"unknown"``."""
    name = source.license or "unknown"
    return f"{name} (restricted)" if source.license_restricted else name
