"""Evaluations in MLflow: a prediction set's metrics with bootstrap intervals, an external evaluation as a run."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Mapping

from cxrkit.tracking.run import _json, local_store, metric_name, open_run

__all__ = ["test_metrics", "log_external"]

logger = logging.getLogger("cxrkit.tracking")


def test_metrics(run_dir: Path, split: str = "test", prefix: str = "test_", bootstrap: int = 1000,
                 seed: int = 0) -> dict[str, float]:
    """``{prefix}<metric>`` with ``_ci_low`` / ``_ci_high`` (bootstrap) for one prediction set of a run folder."""
    from cxrkit.report.report import evaluate_run  # slow (scikit-learn, matplotlib): only when metrics are logged
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
