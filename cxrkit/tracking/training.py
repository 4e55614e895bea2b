"""One training as one MLflow run: MONAI's ``MLFlowHandler`` (``--tracking mlflow``) taken over by :class:`RunTracker`."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

from ignite.engine import Events
from monai.handlers import MLFlowHandler

from cxrkit.tracking.evaluation import test_metrics
from cxrkit.tracking.run import TrackedRun, _json, _numbers

__all__ = ["RunTracker", "trainer_handlers", "evaluator_handlers"]

logger = logging.getLogger("cxrkit.tracking")
#: run-folder files logged as artifacts (never predictions or the split: they name images).
_RECORDS = ("metrics.json", "metrics.csv", "weights.json", "versions.json", "summary.json", "calibration.json")


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
        # not MONAI's own switch; tracking_uri is no setting (a server's URI may hold credentials)
        params: dict[str, Any] = {k: v for k, v in self.settings.items() if not isinstance(v, Mapping)
                                  and k != "save_execute_config"}
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
            from cxrkit.report import write_report  # slow (figures): only a tracked run's end needs it

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
    from cxrkit.engine.handlers import MetricsRecorder  # torch-heavy: evaluate/inference configs import this module

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
