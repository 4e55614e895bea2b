"""cxrkit's Python API: run a bundle, predict images, read a run folder.

These are the functions the ``cxrkit`` command line is a thin layer over, and
the ones ``cxrkit compare``, the benchmarks, the demo, the MONAI Label app and
the review page call (each is defined in the module that owns it and
re-exported here). See ``docs/api.md`` for an example of each.

* run a bundle: :func:`run_bundle` (and :func:`train`, :func:`evaluate`, :func:`infer`),
  :func:`bundle_workflow`, :func:`user_error`;
* predict images: :class:`Predictor`, :func:`load_model`, :func:`predict`;
* read a run folder: :class:`RunPaths` (every file of the layout), :func:`read_run` (what reports use);
* trust a run: :func:`external` (another collection), :func:`audit` (shortcut probes),
  :func:`calibrate` (temperature scaling); see ``docs/trust.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from cxrkit.audit.shortcuts import AuditResult
from cxrkit.audit.shortcuts import audit_run as audit
from cxrkit.bundle.runner import bundle_workflow, run_bundle, user_error
from cxrkit.engine.finish import calibrate_run as calibrate
from cxrkit.report.runfolder import RunFolder, RunFolderError
from cxrkit.report.runfolder import load_run as read_run
from cxrkit.runfolder import RunDirError, RunPaths, class_names
from cxrkit.serve.model import LoadedModel, ModelLoadError, load_model
from cxrkit.serve.predict import Prediction, PredictionResult, Predictor

__all__ = [
    "run_bundle",
    "train",
    "evaluate",
    "infer",
    "bundle_workflow",
    "user_error",
    "Predictor",
    "load_model",
    "predict",
    "LoadedModel",
    "Prediction",
    "PredictionResult",
    "ModelLoadError",
    "RunPaths",
    "RunDirError",
    "read_run",
    "RunFolder",
    "RunFolderError",
    "external",
    "audit",
    "AuditResult",
    "calibrate",
]


def train(bundle: str | os.PathLike, **overrides: Any) -> Path:
    """Train ``bundle`` (a bundle folder or plugin name); returns the run folder.

    ``overrides`` are config ids and values, as ``cxrkit run training`` takes them
    (``dataset_dir="data/x", epochs=3``). Resume with ``resume=RUN_DIR``.
    """
    return run_bundle("training", bundle, overrides)  # type: ignore[return-value]


def evaluate(run_dir: str | os.PathLike, **overrides: Any) -> Path:
    """Evaluate a run folder's ``models/model.pt`` on a dataset; returns the evaluation folder."""
    return run_bundle("evaluate", run_dir, overrides)  # type: ignore[return-value]


def infer(run_dir: str | os.PathLike, input: str | os.PathLike, **overrides: Any) -> Path:  # noqa: A002
    """The bundle's inference config on an image file or folder; returns the predictions CSV."""
    return run_bundle("inference", run_dir, {"input": str(input), **overrides})  # type: ignore[return-value]


def predict(model: str | os.PathLike, inputs: Sequence[str | os.PathLike], *, batch_size: int = 8,
            cam_dir: str | os.PathLike | None = None, device: str = "auto", trust: bool = False,
            progress: bool = False) -> PredictionResult:
    """Class probabilities for image files and folders with a run folder, bundle or ``model.ts``.

    The same as ``cxrkit predict`` (:meth:`Predictor.predict`); ``cam_dir`` writes Grad-CAM overlays.
    """
    predictor = Predictor.load(model, device=device, trust=trust)
    return predictor.predict(inputs, batch_size=batch_size, cam_dir=cam_dir, progress=progress)


def external(run_dir: str | os.PathLike, dataset: str, dataset_dir: str | os.PathLike, *,
             class_map: str | dict | None = None, task: str | None = None, name: str | None = None,
             allow_missing: bool = False, dataset_options: dict[str, Any] | None = None,
             **overrides: Any) -> Path:
    """Evaluate a run on another collection (external validation); returns ``RUN_DIR/external/<name>/``.

    Args:
        run_dir: a trained run folder.
        dataset: the other collection's adapter (``cohen``, ``coronahack``, ``radiography``, ``folder``, ``csv``).
        dataset_dir: its folder.
        class_map: ``DATASET_CLASS=RUN_CLASS,...`` (or a mapping); classes left out are not evaluated.
            Default: the collection's class names must be the run's.
        task: the collection's task.
        name: the evaluation's folder name (default ``dataset`` or ``dataset-task``).
        allow_missing: leave out metadata rows whose image file is missing.
        dataset_options: further adapter options (``{"views": "PA"}`` for cohen, ``{"label_column": "dx"}``
            for csv; ``cxrkit data tasks`` lists them).
        overrides: further evaluate-config values (``max_items``, ``device``, ``skip_bad_images``...).

    Raises:
        cxrkit.runfolder.RunFolderError: the run's ``split.json`` or ``calibration.json`` is not valid.
        ValueError: a name that cannot be a folder name, or a bad class map (from the evaluation).
    """
    import re

    name = name or (dataset + (f"-{task}" if task else ""))
    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        raise ValueError(f"--name {name!r}: use letters, digits, '.', '_' or '-' (it names a folder)")
    paths = RunPaths.of(run_dir)
    paths.read_records(class_names(paths.root))  # split.json and calibration.json, before the evaluation runs
    values: dict[str, Any] = {
        "dataset": dataset, "dataset_dir": str(Path(dataset_dir).expanduser().resolve()), "class_map": class_map,
        "subset": "all", "evaluation_split": "external", "output_dir": str(paths.external / name),
        "dataset_options": {**(dataset_options or {}), **({"allow_missing": True} if allow_missing else {})},
    }
    if task:
        values["task"] = task
    values.update(overrides)
    run_bundle("evaluate", paths.root, values)
    return paths.external / name
