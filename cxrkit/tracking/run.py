"""One MLflow run, reached through MONAI's :class:`~monai.handlers.MLFlowHandler`, every call guarded.

:class:`TrackedRun` is what the training tracker, a comparison's parent run and an external evaluation log
through; :func:`check_tracking` turns ``--tracking`` into a tracker or a one-line error naming the extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping

from monai.handlers import MLFlowHandler
from monai.utils import path_to_sqlite_uri

from cxrkit.options import text

__all__ = ["TRACKERS", "EXTRA", "HTTP_DEFAULTS", "TrackingError", "check_tracking", "local_store", "metric_name",
           "TrackedRun", "open_run"]

logger = logging.getLogger("cxrkit.tracking")  # one logger for every tracking warning

#: the trackers ``--tracking`` accepts (MONAI's ``DEFAULT_EXP_MGMT_SETTINGS`` names).
TRACKERS = ("mlflow",)
#: how to install the optional dependency.
EXTRA = 'pip install "cxrkit[tracking]"'
#: MLflow's HTTP retry settings while cxrkit talks to a server, unless the user set them: a server that is down
#: costs seconds, not MLflow's default minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_BAD_NAME = re.compile(r"[^\w\-. :/]")


class TrackingError(ValueError):
    """``--tracking`` cannot work (unknown tracker, MLflow not installed); the message says what to do."""


def check_tracking(value: Any) -> str | None:
    """The tracker asked for: ``None`` for nothing (``null``, ``false``), else ``mlflow``, checked to be installed.

    Raises:
        TrackingError: an unknown tracker, or MLflow is not installed (the message names the extra).
    """
    name = text(value)
    if name is None:
        return None
    if name.lower() not in TRACKERS:
        raise TrackingError(f"unknown --tracking {value!r}: use {' or '.join(TRACKERS)}")
    try:
        import mlflow  # noqa: F401 - optional: only a tracked run needs it
    except ImportError:
        raise TrackingError(f"--tracking mlflow needs MLflow, which is not installed: {EXTRA}") from None
    return name.lower()


def local_store(folder: Any) -> str:
    """The default tracking URI: a SQLite file beside ``folder`` (a run folder or its ``RunPaths``).

    ``runs/x`` -> ``sqlite:///<abs>/runs/mlruns.db``; MONAI's handler keeps artifacts in ``runs/mlruns/``.
    """
    root = Path(str(getattr(folder, "root", folder))).expanduser().resolve()
    return path_to_sqlite_uri(str(root.parent / "mlruns.db"))


def metric_name(name: str) -> str:
    """``name`` as MLflow accepts it (letters, digits, ``_ - . : /`` and spaces): others become ``_``."""
    return _BAD_NAME.sub("_", str(name)).strip("/") or "_"


def _numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    return {metric_name(prefix + str(k)): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's HTTP retries shortened (:data:`HTTP_DEFAULTS`) for the calls inside, unless the user set them."""
    added = [k for k in HTTP_DEFAULTS if k not in os.environ]
    os.environ.update({k: HTTP_DEFAULTS[k] for k in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class TrackedRun:
    """One MLflow run, reached through MONAI's :class:`~monai.handlers.MLFlowHandler`; every call guarded.

    The first call that fails (server down, an error answer) logs one warning and switches the run off: later
    calls do nothing, so the work being tracked goes on.

    Args:
        handler: MONAI's handler (its client, experiment name and run name).
        what: what is tracked, for the warning (``the training runs/x``).
    """

    def __init__(self, handler: MLFlowHandler, what: str) -> None:
        if not isinstance(handler, MLFlowHandler):
            raise TypeError(f"handler must be MONAI's MLFlowHandler, got {type(handler).__name__}")
        self.handler = handler
        self.what = what
        self.broken = False

    @property
    def run_id(self) -> str | None:
        run = self.handler.cur_run
        return run.info.run_id if run is not None else None

    @property
    def uri(self) -> str:
        return str(getattr(self.handler.client, "tracking_uri", "") or os.environ.get("MLFLOW_TRACKING_URI", ""))

    def call(self, action: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)``, or ``None`` when tracking failed now or before (one warning in all)."""
        if self.broken:
            return None
        try:
            with _quick_http():
                return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - tracking must never cost the work it records
            self.broken = True
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            logger.warning("MLflow tracking at %s failed while %s (%s: %s); %s goes on without it and its run "
                           "folder is written as always", self.uri, action, type(exc).__name__, reason[:300],
                           self.what)
            logger.debug("tracking failure", exc_info=exc)
            return None

    def start(self, engine: Any, run_name: str, tags: Mapping[str, str] | None = None) -> bool:
        """Open the run (MONAI's ``start``: the experiment, then the unfinished run of that name or a new one)."""
        if self.handler.run_name is None:
            self.handler.run_name = run_name
        self.call("opening the run", self.handler.start, engine)
        if self.run_id is None:
            return False
        self.set_tags(dict(tags or {}))
        return not self.broken

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # optional dependency: imported once tracking is on

        items = [RunTag(str(k), str(v)) for k, v in tags.items() if v is not None]
        if items and self.run_id:
            self.call("setting tags", self.handler.client.log_batch, self.run_id, tags=items)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters not yet logged in this run (a resumed run keeps its first values), 100 a batch."""
        from mlflow.entities import Param  # optional dependency: imported once tracking is on

        if not self.run_id or self.broken:
            return
        run = self.call("reading the run", self.handler.client.get_run, self.run_id)
        logged = set(run.data.params) if run is not None else set()
        items = [Param(metric_name(k), str(v)[:6000]) for k, v in params.items()
                 if metric_name(k) not in logged]
        for start in range(0, len(items), 100):
            self.call("logging parameters", self.handler.client.log_batch, self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        if metrics and self.run_id:
            self.call("logging metrics", self.handler._log_metrics, dict(metrics), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if not self.run_id or not path.exists():
            return
        client = self.handler.client
        if path.is_dir():
            self.call(f"uploading {path.name}/", client.log_artifacts, self.run_id, str(path), artifact_path)
        else:
            self.call(f"uploading {path.name}", client.log_artifact, self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (``FINISHED``, ``FAILED``, ``KILLED``) and release a local store."""
        if self.run_id and not self.broken:
            self.call("ending the run", self.handler.client.set_terminated, self.run_id, status)
        self.handler.cur_run = None
        with contextlib.suppress(Exception):
            self.handler.close()  # nothing left to end: releases MONAI's SQLite engine


def open_run(tracking_uri: str | None, experiment_name: str | None, run_name: str, what: str,
             tags: Mapping[str, str] | None = None) -> TrackedRun:
    """A :class:`TrackedRun` opened outside an engine (a comparison's parent run, an external evaluation).

    Raises:
        TrackingError: MLflow is not installed, or the URI is one MLflow cannot store runs in.
    """
    check_tracking("mlflow")
    try:
        handler = MLFlowHandler(tracking_uri=tracking_uri, experiment_name=experiment_name or "cxrkit",
                                run_name=run_name, iteration_log=False, epoch_log=False)
    except ValueError as exc:
        raise TrackingError(f"--tracking_uri {tracking_uri}: {exc}") from None
    handler.default_tracking_params = []  # not an engine: no max_epochs to log
    run = TrackedRun(handler, what)
    run.start(SimpleNamespace(state=SimpleNamespace()), run_name, tags)
    return run
