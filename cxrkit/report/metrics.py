"""Classification metrics for reports, computed with scikit-learn.

Everything here is a pure function of ``y_true`` (class indices) and ``y_prob``
(softmax probabilities, one column per class), optionally with the model's
recorded ``y_pred``; the default prediction is ``argmax(y_prob)``. All classes
``0..n_classes-1`` take part, including classes with zero support or never
predicted (``zero_division=0``, as scikit-learn). ROC AUC is one-vs-rest per
class and is ``nan`` where a class has no positives or no negatives; the macro
AUC is ``nan`` when any class's AUC is.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score, roc_curve

__all__ = [
    "ClassificationMetrics",
    "compute_metrics",
    "roc_points",
    "headline",
    "headline_labels",
    "point_values",
    "check_inputs",
]


@dataclass(frozen=True)
class ClassificationMetrics:
    """Point estimates for one set of predictions.

    Attributes:
        classes: class names, index order.
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        precision, recall, f1, specificity, support: per class, shape ``(C,)``.
        auc: one-vs-rest ROC AUC per class (nan where undefined).
        accuracy: overall accuracy.
        macro: macro averages ``{"precision", "recall", "f1"}`` over all classes.
        weighted: support-weighted averages ``{"precision", "recall", "f1"}``.
        macro_auc: mean of ``auc`` (nan when any class's AUC is undefined).
    """

    classes: tuple[str, ...]
    confusion: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    specificity: np.ndarray
    support: np.ndarray
    auc: np.ndarray
    accuracy: float
    macro: Mapping[str, float]
    weighted: Mapping[str, float]
    macro_auc: float

    @property
    def n(self) -> int:
        """Number of predictions."""
        return int(self.support.sum())

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def check_inputs(y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Validate and convert metric inputs.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: probabilities, shape ``(N, C)``.
        y_pred: predicted class indices, shape ``(N,)``; default ``argmax(y_prob)``.

    Returns:
        ``(y_true, y_prob, y_pred)`` as int / float64 / int arrays.

    Raises:
        ValueError: shapes disagree, there are no predictions, or an index is out of range.
    """
    y_true = np.asarray(y_true).astype(np.int64, copy=False)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_prob.ndim != 2 or y_prob.shape[1] < 2:
        raise ValueError(f"y_prob must have shape (N, n_classes >= 2), got {y_prob.shape}")
    if y_true.ndim != 1 or y_true.shape[0] != y_prob.shape[0] or y_true.size == 0:
        raise ValueError(f"y_true must have shape ({y_prob.shape[0]},) with N > 0, got {y_true.shape}")
    y_pred = y_prob.argmax(1) if y_pred is None else np.asarray(y_pred).astype(np.int64, copy=False)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred must have shape {y_true.shape}, got {y_pred.shape}")
    n_classes = y_prob.shape[1]
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return y_true, y_prob, y_pred


def _one_vs_rest_auc(y_true: np.ndarray, scores: np.ndarray, k: int) -> float:
    positives = y_true == k
    if positives.all() or not positives.any():
        return math.nan  # one class only: AUC undefined
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(roc_auc_score(positives, scores))


def compute_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> ClassificationMetrics:
    """Compute every report metric with scikit-learn.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: softmax probabilities, shape ``(N, C)``.
        y_pred: the predicted class per row; default ``argmax(y_prob)``.
        classes: class names; default ``"0"``, ``"1"``, ...

    Returns:
        The point estimates.

    Raises:
        ValueError: invalid inputs (see :func:`check_inputs`) or ``classes`` of the wrong length.
    """
    y_true, y_prob, y_pred = check_inputs(y_true, y_prob, y_pred)
    n_classes = y_prob.shape[1]
    classes = tuple(str(c) for c in (classes if classes is not None else range(n_classes)))
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} probability columns")
    labels = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    averages = {}
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average, zero_division=0)
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f)}
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    tp = np.diag(cm)
    fp = cm.sum(0) - tp
    tn = cm.sum() - cm.sum(1) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        specificity = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)
    auc = np.array([_one_vs_rest_auc(y_true, y_prob[:, k], k) for k in labels])
    return ClassificationMetrics(
        classes=classes,
        confusion=cm,
        precision=precision,
        recall=recall,
        f1=f1,
        specificity=specificity.astype(np.float64),
        support=support,
        auc=auc,
        accuracy=float(accuracy_score(y_true, y_pred)),
        macro=averages["macro"],
        weighted=averages["weighted"],
        macro_auc=float(np.mean(auc)),
    )


def roc_points(y_true: np.ndarray, y_prob: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """One-vs-rest ROC curve of class ``k`` (scikit-learn's ``roc_curve``).

    Args:
        y_true: true class indices.
        y_prob: probabilities, shape ``(N, C)``.
        k: the class taken as positive.

    Returns:
        ``(fpr, tpr)``, or None when class ``k`` has no positives or no negatives.
    """
    positives = np.asarray(y_true) == k
    if positives.all() or not positives.any():
        return None
    fpr, tpr, _ = roc_curve(positives, np.asarray(y_prob)[:, k])
    return fpr, tpr


def headline_labels(classes: Sequence[str], positive: int | None) -> dict[str, str]:
    """The headline metrics of a report, key -> human label, in display order.

    Binary runs (or any run with a positive class) report sensitivity and
    specificity of the positive class and its ROC AUC; multiclass runs without
    one report them one-vs-rest for every class and the macro AUC.

    Args:
        classes: class names.
        positive: the positive class index, or None.

    Returns:
        Ordered mapping such as ``{"accuracy": "Accuracy", "sensitivity/COVID": "Sensitivity (COVID)", ...}``.
    """
    labels = {
        "accuracy": "Accuracy",
        "macro_precision": "Precision (macro avg)",
        "macro_recall": "Recall (macro avg)",
        "macro_f1": "F1 (macro avg)",
    }
    chosen = [positive] if positive is not None else range(len(classes))
    for k in chosen:
        labels[f"sensitivity/{classes[k]}"] = f"Sensitivity ({classes[k]})"
        labels[f"specificity/{classes[k]}"] = f"Specificity ({classes[k]})"
    if positive is not None and len(classes) == 2:
        labels["auc"] = f"ROC AUC ({classes[positive]})"
    else:
        labels["auc"] = "ROC AUC (macro, one-vs-rest)"
    return labels


def headline(values: Mapping[str, np.ndarray], classes: Sequence[str], positive: int | None) -> dict[str, np.ndarray]:
    """Pick the headline metrics out of per-class arrays.

    Works for point estimates (scalars / ``(C,)`` arrays) and for bootstrap
    resamples (``(B,)`` / ``(B, C)`` arrays) alike.

    Args:
        values: ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
            ``macro_auc`` (scalar or ``(B,)``) and ``recall``, ``specificity``,
            ``auc`` (``(C,)`` or ``(B, C)``).
        classes: class names.
        positive: the positive class index, or None.

    Returns:
        Mapping with the keys of :func:`headline_labels`.
    """
    out = {}
    for key in headline_labels(classes, positive):
        if key.startswith(("sensitivity/", "specificity/")):
            kind, name = key.split("/", 1)
            array = values["recall" if kind == "sensitivity" else "specificity"]
            out[key] = np.asarray(array)[..., list(classes).index(name)]
        elif key == "auc":
            binary = positive is not None and len(classes) == 2
            out[key] = np.asarray(values["auc"])[..., positive] if binary else np.asarray(values["macro_auc"])
        else:
            out[key] = np.asarray(values[key])
    return out


def point_values(m: ClassificationMetrics) -> dict[str, np.ndarray | float]:
    """The arrays :func:`headline` expects, from point estimates."""
    return {
        "accuracy": m.accuracy,
        "macro_precision": m.macro["precision"],
        "macro_recall": m.macro["recall"],
        "macro_f1": m.macro["f1"],
        "macro_auc": m.macro_auc,
        "recall": m.recall,
        "specificity": m.specificity,
        "auc": m.auc,
    }
