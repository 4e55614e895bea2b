"""The prediction sets of a run folder, each named by the split it comes from.

A run folder holds predictions of its best model on up to three kinds of images:

* ``predictions.csv``: the VALIDATION part, which also chose the best epoch
  (its numbers are optimistic: the maximum over epochs, picked on these images);
* ``test/predictions.csv`` (+ ``test/metrics.json``): the held-out TEST part,
  used once, after training; reports take their headline from it;
* ``external/<name>/predictions.csv`` (+ ``metrics.json``): another collection,
  mapped onto the run's classes (``cxrkit external``).

:class:`SplitPredictions` carries one set and says what it is, so that every
number a report prints can say which split it comes from.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrkit.runfolder import RunFolderError

__all__ = ["SplitPredictions", "VALIDATION", "TEST", "load_evaluations", "describe_split", "read_predictions",
           "RunFolderError", "PROB_SUM_TOL"]

logger = logging.getLogger(__name__)

#: Tolerance on ``sum(prob_*) == 1`` per row of a predictions CSV.
PROB_SUM_TOL = 1e-3


VALIDATION = "validation"
TEST = "test"


@dataclass(frozen=True)
class SplitPredictions:
    """The best model's predictions on one set of images.

    Attributes:
        split: ``validation``, ``test`` or ``external: <name>``.
        images: image paths, relative to their dataset root.
        y_true: true class index per image.
        y_pred: predicted class index per image.
        y_prob: softmax probabilities ``(n_images, n_classes)`` (uncalibrated).
        source: the predictions file.
        info: the ``metrics.json`` written beside it (dataset, class map, ...); empty for validation.
    """

    split: str
    images: list[str]
    y_true: np.ndarray
    y_pred: np.ndarray
    y_prob: np.ndarray
    source: Path
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of images."""
        return int(len(self.y_true))

    @property
    def is_external(self) -> bool:
        """Whether the images come from another collection."""
        return self.split.startswith("external")

    @property
    def label(self) -> str:
        """Short display name, e.g. ``test`` or ``external: cohen``."""
        return self.split


def describe_split(split: str, n: int | None = None) -> str:
    """What a split is, in words, for report captions."""
    count = f", {n} images" if n is not None else ""
    if split == TEST:
        return f"held-out test part{count}: never used for training or for choosing the model"
    if split == VALIDATION:
        return f"validation part{count}: it also chose the best epoch, so its numbers are optimistic"
    return f"{split}{count}: another collection, mapped onto the run's classes"


def read_predictions(path: Path, n_classes: int, what: str = "validation predictions of the best model"
                     ) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """``(images, y_true, y_pred, y_prob)`` of a labelled predictions CSV, validated.

    Raises:
        RunFolderError: the file is missing or malformed (the message names the line).
    """
    if not path.is_file():
        raise RunFolderError(
            f"{path}: file not found ({what}). "
            "The training did not finish its final evaluation; re-run or resume it."
        )
    prob_cols = [f"prob_{k}" for k in range(n_classes)]
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        needed = ["image", "label", "pred", *prob_cols]
        absent = [c for c in needed if c not in header]
        if absent:
            raise RunFolderError(
                f"{path}: missing column(s) {', '.join(absent)} (found: {', '.join(header) or 'no header'}). "
                f"Expected image,label,pred,{','.join(prob_cols)} for the {n_classes} classes in metrics.json."
            )
        images, labels, preds, probs = [], [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                labels.append(int(row["label"]))
                preds.append(int(row["pred"]))
                probs.append([float(row[c]) for c in prob_cols])
            except (TypeError, ValueError):
                raise RunFolderError(
                    f"{path}, line {line}: label and pred must be integers and prob_* numbers, got "
                    f"label={row.get('label')!r}, pred={row.get('pred')!r}. A report needs the true label of "
                    "every validation image; these predictions look like an unlabelled inference run."
                ) from None
            images.append(row["image"])
    if not labels:
        raise RunFolderError(f"{path}: no prediction rows; the validation split was empty.")
    y_true, y_pred, y_prob = np.asarray(labels), np.asarray(preds), np.asarray(probs, dtype=np.float64)
    for name, arr in (("label", y_true), ("pred", y_pred)):
        bad = np.flatnonzero((arr < 0) | (arr >= n_classes))
        if bad.size:
            raise RunFolderError(
                f"{path}, line {bad[0] + 2}: {name}={arr[bad[0]]} is outside 0..{n_classes - 1} "
                f"({bad.size} such row(s)); labels must index metrics.json 'classes'."
            )
    if not np.isfinite(y_prob).all() or (y_prob < 0).any() or (y_prob > 1).any():
        line = int(np.flatnonzero(~np.isfinite(y_prob).all(1) | (y_prob < 0).any(1) | (y_prob > 1).any(1))[0]) + 2
        raise RunFolderError(f"{path}, line {line}: probabilities must be finite numbers in [0, 1].")
    off = np.abs(y_prob.sum(1) - 1.0) > PROB_SUM_TOL
    if off.any():
        line = int(np.flatnonzero(off)[0]) + 2
        raise RunFolderError(
            f"{path}, line {line}: prob_* sum to {y_prob[line - 2].sum():.4f}, not 1 ({int(off.sum())} row(s)); "
            "the columns must hold softmax probabilities, not logits or sigmoid outputs."
        )
    disagree = int((y_pred != y_prob.argmax(1)).sum())
    if disagree:
        logger.warning("%s: %d row(s) have pred different from argmax(prob_*); metrics use the pred column",
                       path, disagree)
    return images, y_true, y_pred, y_prob


def _read_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc}); re-run the evaluation that wrote it.") from None
    return data if isinstance(data, dict) else {}


def load_evaluations(run_dir: Path, classes: list[str]) -> tuple[SplitPredictions | None, dict[str, SplitPredictions]]:
    """The test predictions and the external evaluations of a run folder.

    Args:
        run_dir: the run folder.
        classes: the run's classes (the predictions must have as many probability columns).

    Returns:
        ``(test or None, {name: external predictions})``.

    Raises:
        cxrkit.report.runfolder.RunFolderError: a predictions file that exists but is malformed,
            or an evaluation with other classes.
    """
    def one(folder: Path, split: str) -> SplitPredictions | None:
        path = folder / "predictions.csv"
        if not path.is_file():
            return None
        info = _read_info(folder / "metrics.json")
        if info.get("classes") not in (None, classes):
            raise RunFolderError(f"{folder / 'metrics.json'}: classes {info['classes']} differ from the run's "
                                 f"{classes}; evaluate the run's own model again")
        images, y_true, y_pred, y_prob = read_predictions(path, len(classes))
        return SplitPredictions(split, images, y_true, y_pred, y_prob, path, info)

    test = one(run_dir / "test", TEST)
    external: dict[str, SplitPredictions] = {}
    base = run_dir / "external"
    if base.is_dir():
        for folder in sorted(p for p in base.iterdir() if p.is_dir()):
            found = one(folder, f"external: {folder.name}")
            if found is not None:
                external[folder.name] = found
            else:
                logger.warning("%s: no predictions.csv; the external evaluation did not finish", folder)
    return test, external
