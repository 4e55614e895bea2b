"""Read a finished training run folder for reporting (the files are named by :class:`cxrkit.runfolder.RunPaths`).

A run folder is the unit of record: reports and comparisons read it and
nothing else. :func:`load_run` reads and validates the files a report needs
and fails with a :class:`RunFolderError` that names the file, what is wrong
with it and how to fix it. Required: ``metrics.json`` and ``predictions.csv``
(validation). Read when present: the held-out test predictions
(``test/predictions.csv``), external evaluations (``external/<name>/``), the
temperature (``calibration.json``) and the shortcut audit (``audit/audit.json``);
see :mod:`cxrkit.report.evaluations`.
The descriptive files (``weights.json``, ``summary.json``, ``split.json``,
``configs/metadata.json``, ``versions.json``, ``configs/train.yaml``) are read
when present; a missing one is logged and shown as "not recorded", a corrupt
one is an error. ``split.json`` and ``calibration.json`` are read and checked by
:meth:`cxrkit.runfolder.RunPaths.read_records`, as every command reads them.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.report.evaluations import (
    PROB_SUM_TOL,
    TEST,
    VALIDATION,
    RunFolderError,
    SplitPredictions,
    load_evaluations,
    read_predictions,
)
from cxrkit.runfolder import RunPaths

__all__ = ["RunFolder", "RunFolderError", "load_run", "resolve_positive", "read_predictions", "PROB_SUM_TOL"]

logger = logging.getLogger(__name__)

#: Per-epoch keys the curves and Table 6 use.
CURVE_KEYS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")


@dataclass(frozen=True)
class RunFolder:
    """The parts of a run folder that reports use.

    Attributes:
        path: the run folder.
        classes: class names, index order.
        positive_class: the run's positive class name, or None.
        best_metric: the validation metric that chose ``models/model.pt``.
        best_epoch: the epoch of the best model.
        epochs: one dict per epoch from ``metrics.json`` (missing values as nan).
        images: validation image paths, relative to the dataset root.
        y_true: true class index per validation image.
        y_pred: predicted class index per validation image (the ``pred`` column).
        y_prob: softmax probabilities, shape ``(n_images, n_classes)``.
        weights: ``weights.json`` (empty when absent).
        summary: ``summary.json`` (empty when absent).
        split: ``split.json`` (None when absent).
        metadata: ``configs/metadata.json`` (empty when absent).
        versions: ``versions.json`` (empty when absent).
        dataset: dataset name found in the run's records, or None.
        missing: names of the optional files that were absent.
        test: the best model's predictions on the held-out test part, or None.
        external: name -> predictions on another collection.
        calibration: the fitted temperature (``calibration.json``), or None.
    """

    path: Path
    classes: list[str]
    positive_class: str | None
    best_metric: str | None
    best_epoch: int | None
    epochs: list[dict[str, float]]
    images: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    y_prob: np.ndarray
    weights: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None
    missing: tuple[str, ...] = ()
    test: SplitPredictions | None = None
    external: dict[str, SplitPredictions] = field(default_factory=dict)
    calibration: Any = None

    @property
    def validation(self) -> SplitPredictions:
        """The validation predictions (``predictions.csv``)."""
        return SplitPredictions(VALIDATION, self.images, self.y_true, self.y_pred, self.y_prob,
                                self.path / "predictions.csv")

    @property
    def headline(self) -> SplitPredictions:
        """The predictions a report leads with: the held-out test part, else validation."""
        return self.test if self.test is not None else self.validation

    def predictions(self, split: str) -> SplitPredictions:
        """The predictions of ``validation``, ``test`` or ``external: <name>`` (or a bare external name).

        Raises:
            RunFolderError: the run has no such predictions.
        """
        if split == VALIDATION:
            return self.validation
        if split == TEST and self.test is not None:
            return self.test
        name = split.split(":", 1)[-1].strip()
        if split != TEST and name in self.external:
            return self.external[name]
        raise RunFolderError(f"{self.path}: no {split} predictions (available: "
                             f"{', '.join(self.splits)})")

    @property
    def splits(self) -> list[str]:
        """Every prediction set of the run: validation, test (if any), external ones."""
        return [VALIDATION] + ([TEST] if self.test is not None else []) + [e.split for e in self.external.values()]

    @property
    def name(self) -> str:
        """The run folder's name."""
        return self.path.name

    @property
    def plugin(self) -> str:
        """The weight source (``weights.json`` ``plugin``), else the folder name."""
        return str(self.weights.get("plugin") or self.path.name)

    @property
    def weights_verification(self) -> str | None:
        """``"verified"``, ``"unverified"`` or ``"unverifiable"`` for the initial weight file, from
        ``weights.json`` (runs before the field: from its ``hash_ok``); None without a recorded file."""
        from cxrkit.weights.provenance import UNVERIFIABLE, UNVERIFIED, VERIFIED, verification

        w = self.weights
        if not w or w.get("pretrained") is False or not w.get("sha256"):
            return None
        value = w.get("verification")
        if value in (VERIFIED, UNVERIFIED, UNVERIFIABLE):
            return str(value)
        return verification(w["hash_ok"]) if "hash_ok" in w else None

    @property
    def source_label(self) -> str:
        """The plugin, marked ``(UNVERIFIED weights)`` when the weight file did not match its published hash."""
        return self.plugin + (" (UNVERIFIED weights)" if self.weights_verification == "unverified" else "")

    @property
    def sha256_short(self) -> str | None:
        """First 12 hex digits of the weight file's sha256, or None."""
        sha = self.weights.get("sha256")
        return str(sha)[:12] if sha else None

    @property
    def fold(self) -> int | None:
        """The cross-validation fold of the split manifest, or None."""
        value = (self.split or {}).get("fold")
        return None if value is None else int(value)

    @property
    def task(self) -> str | None:
        """The bundle's task description (``configs/metadata.json`` ``task``)."""
        return self.metadata.get("task")


def _read_json(path: Path, required: bool, what: str) -> Any:
    if not path.is_file():
        if required:
            raise RunFolderError(
                f"{path}: file not found ({what}). Point the command at a finished run folder "
                "(runs/<plugin>-<timestamp>/) written by cxrkit training, or re-run the training."
            )
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(
            f"{path}: not valid JSON ({exc}). The file is corrupt or was truncated; "
            "restore it or re-run the training that wrote it."
        ) from None


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_int(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False


def _read_metrics(path: Path) -> dict[str, Any]:
    data = _read_json(path, True, "per-epoch metrics")
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object with 'classes' and 'epochs', got {type(data).__name__}.")
    classes = data.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise RunFolderError(
            f"{path}: 'classes' must be a list of at least two class names, got {classes!r}. "
            "The training engine writes the run's classes here in index order."
        )
    if len(set(classes)) != len(classes):
        raise RunFolderError(f"{path}: duplicate class names in 'classes': {classes}.")
    epochs = data.get("epochs")
    if not isinstance(epochs, list) or not epochs or not all(isinstance(e, dict) for e in epochs):
        raise RunFolderError(
            f"{path}: 'epochs' must be a non-empty list of per-epoch objects; the run may have stopped "
            "before its first epoch ended. Re-run or resume the training."
        )
    rows = []
    for i, row in enumerate(epochs):
        clean = {k: _float(v) for k, v in row.items()}
        clean["epoch"] = int(clean["epoch"]) if math.isfinite(clean.get("epoch", math.nan)) else i + 1
        rows.append(clean)
    if not any(math.isfinite(r.get(k, math.nan)) for r in rows for k in CURVE_KEYS):
        raise RunFolderError(f"{path}: no epoch has any of {', '.join(CURVE_KEYS)}; nothing to plot.")
    positive = data.get("positive_class")
    if positive is not None and positive not in classes:
        raise RunFolderError(f"{path}: positive_class {positive!r} is not one of the classes {classes}.")
    best_epoch = data.get("best_epoch")
    if best_epoch is not None and not _is_int(best_epoch):
        raise RunFolderError(f"{path}: best_epoch must be an epoch number, got {best_epoch!r}.")
    return {
        "classes": list(classes),
        "positive_class": positive,
        "best_metric": data.get("best_metric"),
        "best_epoch": None if best_epoch is None else int(best_epoch),
        "epochs": rows,
    }


def _find_dataset(run_dir: Path, split: dict | None, summary: dict) -> str | None:
    for source in (split or {}, summary):
        for key in ("dataset", "dataset_name"):
            if isinstance(source.get(key), str):
                return source[key]
    train_yaml = RunPaths(run_dir).train_config
    if train_yaml.is_file():
        import yaml

        try:
            config = yaml.safe_load(train_yaml.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise RunFolderError(f"{train_yaml}: not valid YAML ({exc}); restore it or re-run the training.") from None
        if isinstance(config, dict):
            for key in ("dataset_name", "dataset"):
                if isinstance(config.get(key), str):
                    return config[key]
    return None


def load_run(run_dir: str | Path, *, calibration: bool = True) -> RunFolder:
    """Read and validate a run folder.

    Args:
        run_dir: the run folder (``runs/<plugin>-<timestamp>/``).
        calibration: read ``calibration.json``; ``False`` for ``cxrkit calibrate``, which replaces it
            (the field is then ``None``).

    Returns:
        The run's classes, per-epoch metrics, validation predictions and records.

    Raises:
        RunFolderError: the folder or a required file is missing, or any file read is malformed.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunFolderError(f"{run_dir}: not a directory. Pass a run folder such as runs/imagenet-20240101-120000.")
    paths = RunPaths(run_dir)
    metrics = _read_metrics(paths.metrics_json)
    classes = metrics["classes"]
    images, y_true, y_pred, y_prob = read_predictions(paths.predictions, len(classes))
    test, external = load_evaluations(run_dir, classes)
    records = paths.read_records(classes, calibration=calibration)
    manifest = records.split

    optional = {
        "weights.json": paths.weights,
        "summary.json": paths.summary,
        "configs/metadata.json": paths.metadata,
        "versions.json": paths.versions,
    }
    found: dict[str, Any] = {}
    missing = [] if manifest is not None else ["split.json"]
    if manifest is None:
        logger.warning("%s: not found; the report shows it as not recorded", paths.split)
    for name, path in optional.items():
        value = _read_json(path, False, name)
        if value is None:
            missing.append(name)
            logger.warning("%s: not found; the report shows it as not recorded", path)
        elif not isinstance(value, dict):
            raise RunFolderError(f"{path}: expected a JSON object, got {type(value).__name__}.")
        found[name] = value or {}

    channel_def = found["configs/metadata.json"].get("network_data_format", {}).get("outputs", {})
    channel_def = next(iter(channel_def.values()), {}).get("channel_def") if isinstance(channel_def, dict) else None
    if isinstance(channel_def, dict) and channel_def:
        meta_classes = [channel_def[k] for k in sorted(channel_def, key=lambda k: int(k))]
        if meta_classes != classes:
            logger.warning(
                "%s: channel_def classes %s differ from metrics.json classes %s; the report uses metrics.json",
                optional["configs/metadata.json"], meta_classes, classes,
            )
    split = manifest.data if manifest is not None else None
    return RunFolder(
        path=run_dir,
        classes=classes,
        positive_class=metrics["positive_class"],
        best_metric=metrics["best_metric"],
        best_epoch=metrics["best_epoch"],
        epochs=metrics["epochs"],
        images=images,
        y_true=y_true,
        y_pred=y_pred,
        y_prob=y_prob,
        weights=found["weights.json"],
        summary=found["summary.json"],
        split=split,
        metadata=found["configs/metadata.json"],
        versions=found["versions.json"],
        dataset=_find_dataset(run_dir, split, found["summary.json"]),
        missing=tuple(missing),
        test=test,
        external=external,
        calibration=records.calibration,
    )


def resolve_positive(classes: list[str], requested: str | int | None, default: str | None = None) -> int | None:
    """The positive class index for sensitivity, specificity and the binary ROC.

    Args:
        classes: class names in index order.
        requested: a class name (case-insensitive) or index given by the user, or None.
        default: the run's ``positive_class`` from ``metrics.json``.

    Returns:
        The index; for two classes with nothing requested or recorded, 0; for more
        classes with nothing requested or recorded, None (one-vs-rest for every class).

    Raises:
        ValueError: ``requested`` names no class.
    """
    for choice in (requested, default):
        if choice is None:
            continue
        text = str(choice)
        if text in classes:
            return classes.index(text)
        lowered = [c.lower() for c in classes]
        if text.lower() in lowered:
            return lowered.index(text.lower())
        if text.isdigit() and int(text) < len(classes):
            return int(text)
        raise ValueError(
            f"positive class {text!r} is not one of {classes} (give a name or an index 0..{len(classes) - 1})")
    return 0 if len(classes) == 2 else None
