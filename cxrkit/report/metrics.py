"""Classification metrics for reports: the point estimates of :mod:`cxrkit.metrics` on a prediction file.

Everything here reads ``y_true`` (class indices) and ``y_prob`` (softmax
probabilities, one column per class), optionally with the model's recorded
``y_pred``; the metrics themselves, their names and the rule for undefined values
(``nan``, left out of the averages) are :mod:`cxrkit.metrics`'s. This module
holds what a report adds: the per-class arrays as one record, the headline
selection and the ROC curve's points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from sklearn.metrics import roc_curve

from cxrkit.metrics import METRICS, check_inputs, evaluate, record

__all__ = [
    "ClassificationMetrics",
    "compute_metrics",
    "roc_points",
    "headline",
    "headline_labels",
    "check_inputs",
]


@dataclass(frozen=True)
class ClassificationMetrics:
    """Point estimates for one set of predictions (:func:`cxrkit.metrics.evaluate`).

    Attributes:
        classes: class names, index order.
        values: :func:`cxrkit.metrics.evaluate`'s output (one row).
        confusion: ``(C, C)`` counts, rows = true class, columns = predicted class.
        precision, sensitivity, f1, specificity, auc, support: per class, shape ``(C,)``; ``nan`` where undefined.
        accuracy: overall accuracy.
        macro: macro averages ``{"precision", "sensitivity", "f1"}`` over the classes where defined.
        weighted: support-weighted averages ``{"precision", "sensitivity", "f1"}``.
        macro_auc: mean of ``auc`` over the classes where it is defined.
    """

    classes: tuple[str, ...]
    values: Mapping[str, np.ndarray]

    def _row(self, name: str) -> np.ndarray:
        return np.asarray(self.values[name][0])

    @property
    def confusion(self) -> np.ndarray:
        return self._row("confusion").round().astype(np.int64)

    @property
    def support(self) -> np.ndarray:
        return self._row("support").round().astype(np.int64)

    @property
    def precision(self) -> np.ndarray:
        return self._row("precision")

    @property
    def sensitivity(self) -> np.ndarray:
        return self._row("sensitivity")

    @property
    def specificity(self) -> np.ndarray:
        return self._row("specificity")

    @property
    def f1(self) -> np.ndarray:
        return self._row("f1")

    @property
    def auc(self) -> np.ndarray:
        return self._row("auc")

    @property
    def accuracy(self) -> float:
        return float(self._row("accuracy"))

    @property
    def macro_auc(self) -> float:
        return float(self._row("macro_auc"))

    @property
    def macro(self) -> dict[str, float]:
        return {n: float(self._row(f"macro_{n}")) for n in ("precision", "sensitivity", "f1")}

    @property
    def weighted(self) -> dict[str, float]:
        return {n: float(self._row(f"weighted_{n}")) for n in ("precision", "sensitivity", "f1")}

    @property
    def n(self) -> int:
        """Number of predictions."""
        return int(self.support.sum())

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    def record(self, positive: int | None) -> dict[str, float]:
        """Every value under the keys of ``metrics.json`` (:func:`cxrkit.metrics.record`)."""
        return record(self.values, self.classes, positive)


def compute_metrics(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> ClassificationMetrics:
    """Compute every metric of :data:`cxrkit.metrics.METRICS` on one set of predictions.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: softmax probabilities, shape ``(N, C)``.
        y_pred: the predicted class per row; default the most probable class.
        classes: class names; default ``"0"``, ``"1"``, ...

    Returns:
        The point estimates.

    Raises:
        ValueError: invalid inputs (see :func:`cxrkit.metrics.check_inputs`) or ``classes`` of the wrong length.
    """
    y_true, y_prob, y_pred = check_inputs(y_true, y_prob, y_pred)
    n_classes = y_prob.shape[1]
    classes = tuple(str(c) for c in (classes if classes is not None else range(n_classes)))
    if len(classes) != n_classes:
        raise ValueError(f"{len(classes)} class names for {n_classes} probability columns")
    return ClassificationMetrics(classes, evaluate(y_true, y_prob, y_pred))


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


_LABELS = {spec.name: spec.label for spec in METRICS}


def headline_labels(classes: Sequence[str], positive: int | None) -> dict[str, str]:
    """The headline metrics of a report, key (as in :func:`cxrkit.metrics.record`) -> human label, in order.

    Runs with a positive class report sensitivity and specificity of the positive
    class and its ROC AUC; multiclass runs without one report them one-vs-rest
    for every class and the macro AUC.

    Args:
        classes: class names.
        positive: the positive class index, or None.

    Returns:
        Ordered mapping such as ``{"accuracy": "Accuracy", "sensitivity/COVID": "Sensitivity (COVID)", ...}``.
    """
    labels = {"accuracy": _LABELS["accuracy"]}
    labels.update({f"macro_{n}": f"{_LABELS[n]} (macro avg)" for n in ("precision", "sensitivity", "f1")})
    chosen = [positive] if positive is not None else range(len(classes))
    for k in chosen:
        for n in ("sensitivity", "specificity"):
            labels[f"{n}/{classes[k]}"] = f"{_LABELS[n]} ({classes[k]})"
    if positive is None:
        labels["auc"] = "ROC AUC (macro, one-vs-rest)"
    else:
        labels["auc"] = f"ROC AUC ({classes[positive]}{'' if len(classes) == 2 else ' vs rest'})"
    return labels


def headline(values: Mapping[str, np.ndarray], classes: Sequence[str], positive: int | None,
             row: int | None = None) -> dict[str, np.ndarray | float]:
    """Pick the headline metrics out of :func:`cxrkit.metrics.evaluate`'s output.

    Args:
        values: the output, for one set or for bootstrap resamples.
        classes: class names.
        positive: the positive class index, or None.
        row: one set's values as floats; ``None``: arrays over all sets.

    Returns:
        Mapping with the keys of :func:`headline_labels`.
    """
    found = record(values, classes, positive, row=row)
    return {key: found[key] for key in headline_labels(classes, positive)}
