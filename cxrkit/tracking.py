"""Experiment tracking with MLflow, the MONAI way: ``--tracking mlflow`` on a training, a comparison, an evaluation.

MONAI bundles already speak MLflow: ``python -m monai.bundle run training ... --tracking mlflow`` patches
:class:`monai.handlers.MLFlowHandler` into the trainer's and the validator's handlers
(``monai.bundle.utils.DEFAULT_MLFLOW_SETTINGS``), configured by the config ids ``tracking_uri``,
``experiment_name`` and ``run_name``. cxrkit's training config defines those ids and hands both handler lists
to :func:`trainer_handlers` / :func:`evaluator_handlers`, where a :class:`RunTracker` takes the handlers over:
it uses MONAI's handler for the MLflow client, the experiment and the run (``start``, ``close``), and logs
what a cxrkit run knows, every call guarded. ``cxrkit run training --tracking mlflow`` goes through the same
MONAI patch (:func:`cxrkit.bundle.runner.run_bundle` hands ``tracking`` to MONAI's ``ConfigWorkflow``).

One training is one MLflow run (named after its run folder unless ``--run_name``):

* parameters: every resolved setting (the config's ``settings``), ``weights.*`` (the weight source, its file's
  sha256 and provenance mark, from ``weights.json``), ``split_sha256`` (the split manifest's hash),
  ``versions.*`` (``versions.json``), ``max_epochs`` and ``epoch_length`` (MONAI's handler);
* metrics, step = epoch: every number of a ``metrics.json`` row, under the same name (``train_loss``,
  ``val_accuracy``, ``val_f1/COVID``, ``lr``...);
* after the test part: ``test_<metric>`` with ``test_<metric>_ci_low`` / ``_ci_high`` (95% bootstrap);
* artifacts: ``report/`` (the run's report, written then), ``models/model.pt``, ``configs/``, the run's JSON
  records and ``metrics.csv``.

The default store needs no server: ``sqlite:///<folder holding the run folder>/mlruns.db`` with artifacts in
``mlruns/`` beside it (MONAI's layout). A tracking server that is down or answers errors never costs the
training: the first failed call logs ONE warning and tracking stops for that run; the run folder is written as
always. MLflow is optional (``pip install "cxrkit[tracking]"``); it is imported only when tracking is asked for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from monai.handlers import MLFlowHandler

__all__ = ["TRACKERS", "EXTRA", "TrackingError", "check_tracking", "local_store", "metric_name", "TrackedRun",
           "RunTracker", "trainer_handlers", "evaluator_handlers", "open_run", "test_metrics", "log_external"]

logger = logging.getLogger(__name__)

#: the trackers ``--tracking`` accepts (MONAI's ``DEFAULT_EXP_MGMT_SETTINGS`` names).
TRACKERS = ("mlflow",)
#: how to install the optional dependency.
EXTRA = 'pip install "cxrkit[tracking]"'
#: MLflow's HTTP retry settings while cxrkit talks to a server, unless the user set them: a server that is down
#: costs seconds, not MLflow's default minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
_BAD_NAME = re.compile(r"[^\w\-. :/]")
#: run-folder files logged as artifacts (never predictions or the split: they name images).
_RECORDS = ("metrics.json", "metrics.csv", "weights.json", "versions.json", "summary.json", "calibration.json")


class TrackingError(ValueError):
    """``--tracking`` cannot work (unknown tracker, MLflow not installed); the message says what to do."""


def check_tracking(value: Any) -> str | None:
    """The tracker asked for: ``None`` for nothing (``null``, ``false``), else ``mlflow``, checked to be installed.

    Raises:
        TrackingError: an unknown tracker, or MLflow is not installed (the message names the extra).
    """
    from cxrkit.options import text

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
    from monai.utils import path_to_sqlite_uri

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
        from mlflow.entities import RunTag

        items = [RunTag(str(k), str(v)) for k, v in tags.items() if v is not None]
        if items and self.run_id:
            self.call("setting tags", self.handler.client.log_batch, self.run_id, tags=items)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log parameters not yet logged in this run (a resumed run keeps its first values), 100 a batch."""
        from mlflow.entities import Param

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
    from types import SimpleNamespace

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


def test_metrics(run_dir: Path, split: str = "test", prefix: str = "test_", bootstrap: int = 1000,
                 seed: int = 0) -> dict[str, float]:
    """``{prefix}<metric>`` with ``_ci_low`` / ``_ci_high`` (bootstrap) for one prediction set of a run folder."""
    import math

    from cxrkit.report.report import evaluate_run
    from cxrkit.report.runfolder import load_run

    ev = evaluate_run(load_run(run_dir), bootstrap=bootstrap, seed=seed, split=split)
    out = {}
    for key, value in ev.point.items():
        name = metric_name(prefix + key)
        out[name] = float(value)
        interval = (ev.intervals or {}).get(key)
        if interval is not None and not math.isnan(interval.low):
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = float(interval.low), float(interval.high)
    return out


def log_external(run_dir: Any, folder: Any, params: Mapping[str, Any] | None = None, tracking_uri: str | None = None,
                 experiment_name: str | None = "cxrkit", run_name: str | None = None, bootstrap: int = 1000,
                 seed: int = 0) -> str | None:
    """Log an external evaluation (``cxrkit external``) as an MLflow run, a child of the run's training run.

    Args:
        run_dir: the trained run folder.
        folder: the evaluation's folder (``RUN_DIR/external/<name>``).
        params: what was evaluated (dataset, task, class map...).
        tracking_uri: the store or server (default: :func:`local_store` of the run folder, as its training).
        experiment_name: the experiment (the training run is looked for there by its run-folder tag).
        run_name: default ``<run folder>-external-<name>``.
        bootstrap: resamples of the intervals.
        seed: bootstrap seed.

    Returns:
        The MLflow run id, or ``None`` when tracking failed (warned).
    """
    root, folder = Path(run_dir).expanduser().resolve(), Path(folder)
    run = open_run(tracking_uri or local_store(root), experiment_name, run_name or f"{root.name}-external-{folder.name}",
                   f"the evaluation {folder}", {"cxrkit.evaluated_run": str(root), "cxrkit.evaluation": folder.name})
    if run.run_id is None or run.broken:
        return None
    if "'" not in str(root):
        found = run.call("finding the training run", run.handler.client.search_runs,
                         [run.handler.experiment.experiment_id], f"tags.`cxrkit.run_folder` = '{root}'")
        if found:
            run.set_tags({"mlflow.parentRunId": found[0].info.run_id})
    values = {"run_folder": str(root), **dict(params or {})}
    values.update({f"weights.{k}": v for k, v in _json(root / "weights.json").items() if not isinstance(v, (dict, list))})
    run.log_params(values)
    try:
        run.log_metrics(test_metrics(root, split=f"external: {folder.name}", prefix="external_", bootstrap=bootstrap,
                                     seed=seed))
    except Exception as exc:  # noqa: BLE001 - the numbers stay in the evaluation folder
        logger.warning("external metrics not logged to MLflow: %s", exc)
    run.log_artifact(folder / "metrics.json", f"external/{folder.name}")
    run_id = run.run_id
    run.close("FINISHED")
    return run_id


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class RunTracker:
    """Ignite handler (trainer): one training as one MLflow run, through MONAI's :class:`MLFlowHandler`.

    Does nothing until it :meth:`adopt` s a handler (``--tracking mlflow``). It must be attached after the
    ``MetricsRecorder`` (:func:`trainer_handlers` appends it), so each epoch's ``metrics.json`` row exists.

    Args:
        run_paths: the run folder (:class:`cxrkit.runfolder.RunPaths`).
        settings: the run's resolved settings (logged as parameters).
        metrics: the ``MetricsRecorder`` (its rows are ``metrics.json``'s); default: the one among the trainer's
            handlers (:func:`trainer_handlers`).
        parent_run: an MLflow run id this run nests under (``cxrkit compare`` sets it).
        bootstrap: resamples of the test metrics' intervals.
        seed: bootstrap seed.
    """

    def __init__(self, run_paths: Any, settings: Mapping[str, Any] | None = None, metrics: Any = None,
                 parent_run: str | None = None, bootstrap: int = 1000, seed: int = 0) -> None:
        if not hasattr(run_paths, "root"):
            raise TypeError(f"run_paths must be a RunPaths, got {type(run_paths).__name__}")
        self.paths = run_paths
        self.settings = dict(settings or {})
        self.metrics = metrics
        self.parent_run = parent_run or None
        self.bootstrap = int(bootstrap)
        self.seed = int(seed)
        self.run: TrackedRun | None = None

    @property
    def enabled(self) -> bool:
        return self.run is not None

    def adopt(self, handler: MLFlowHandler) -> None:
        """Track through ``handler`` (the first one adopted; later ones only said to be replaced)."""
        if self.run is None:
            self.run = TrackedRun(handler, f"the training {self.paths.root}")

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        if self.run is None:
            return
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)
        # before the run recorder, which re-raises the error (Ignite then calls no later handler)
        handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
        if isinstance(handlers, list) and len(handlers) > 1:
            handlers.insert(0, handlers.pop())

    def started(self, engine: Any) -> None:
        run, root = self.run, Path(self.paths.root)
        tags = {"cxrkit.run_folder": str(root), "cxrkit.plugin": self.settings.get("plugin"),
                "mlflow.parentRunId": self.parent_run}
        if run is None or not run.start(engine, root.name, tags):
            return
        params: dict[str, Any] = {k: v for k, v in self.settings.items() if not isinstance(v, Mapping)}
        params.update({f"dataset_options.{k}": v for k, v in dict(self.settings.get("dataset_options") or {}).items()})
        params.update({f"weights.{k}": v for k, v in _json(root / "weights.json").items()
                       if not isinstance(v, (dict, list))})
        params.update({f"versions.{k}": v for k, v in _json(root / "versions.json").items()})
        params["split_sha256"] = _file_sha256(root / "split.json")
        run.log_params(params)

    def __call__(self, engine: Any) -> None:
        rows = getattr(self.metrics, "rows", None) or []
        if self.run is not None and rows:
            row = rows[-1]
            self.run.log_metrics(_numbers({k: v for k, v in row.items() if k != "epoch"}), step=int(row["epoch"]))

    def failed(self, engine: Any, error: BaseException) -> None:
        if self.run is not None:
            self.run.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")

    def finish(self) -> None:
        """After the test part: its metrics with intervals, the report, the model and the records; run ended."""
        run, root = self.run, Path(self.paths.root)
        if run is None or run.run_id is None or run.broken:
            return
        if (root / "test" / "predictions.csv").is_file():
            try:
                run.log_metrics(test_metrics(root, bootstrap=self.bootstrap, seed=self.seed))
            except Exception as exc:  # noqa: BLE001 - the numbers stay in the run folder
                logger.warning("test metrics not logged to MLflow: %s", exc)
        try:
            from cxrkit.report import write_report

            write_report(root, bootstrap=self.bootstrap, seed=self.seed, audit="false")
        except Exception as exc:  # noqa: BLE001 - `cxrkit report RUN` writes it later
            logger.warning("the run's report was not written for MLflow: %s", exc)
        run.log_artifact(root / "report", "report")
        run.log_artifact(Path(self.paths.model), "models")
        run.log_artifact(root / "configs", "configs")
        for name in _RECORDS:
            run.log_artifact(root / name)
        run.log_artifact(root / "test" / "metrics.json", "test")
        run.close("FINISHED")


def _take_over(handlers: Sequence[Any] | None, tracker: RunTracker) -> list[Any]:
    from cxrkit.engine.handlers import MetricsRecorder

    out = []
    for handler in list(handlers or []):
        if isinstance(handler, MLFlowHandler):
            tracker.adopt(handler)
            continue
        if isinstance(handler, MetricsRecorder) and tracker.metrics is None:
            tracker.metrics = handler  # found here: the config cannot name it (it refers to the validator)
        out.append(handler)
    return out


def trainer_handlers(handlers: Sequence[Any] | None, tracker: RunTracker) -> list[Any]:
    """The trainer's handlers with MONAI's ``MLFlowHandler`` (``--tracking mlflow``) replaced by ``tracker``,
    attached last."""
    out = _take_over(handlers, tracker)
    return out + [tracker] if tracker.enabled else out


def evaluator_handlers(handlers: Sequence[Any] | None, tracker: RunTracker) -> list[Any]:
    """The validator's handlers without MONAI's ``MLFlowHandler``: the tracker logs the ``metrics.json`` rows,
    which hold the validation metrics."""
    return _take_over(handlers, tracker)
