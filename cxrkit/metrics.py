"""Classification metrics, each defined once: training (Ignite), reports, comparisons, the bootstrap, calibration.

Every number cxrkit quotes about a set of predictions comes from :data:`METRICS`
through :func:`evaluate` (arrays in, arrays out) and :func:`record` (the named
values ``metrics.json`` and the reports show). The Ignite metrics the evaluator
attaches (:mod:`cxrkit.engine.metrics`) call :func:`evaluate` on the gathered
epoch; :mod:`cxrkit.report.metrics` and :mod:`cxrkit.report.bootstrap` call it on
the prediction files, the bootstrap on all resamples at once.

Inputs: ``y_true`` (``N`` class indices), ``y_prob`` (``(N, C)`` probabilities)
and optionally ``y_pred``; the predicted class defaults to :func:`predicted_class`
(the most probable class, the lowest index on ties). Each image counts with a
weight, one by default; weights of shape ``(B, N)`` evaluate ``B`` weighted sets
at once (a bootstrap resample is how often each image was drawn; a calibration
bin is which images fall in it).

Names: **sensitivity** is recall, the true-positive rate; cxrkit calls it
sensitivity everywhere (``sensitivity/<class>``, ``macro_sensitivity``).

One rule for degenerate cases, the same on every path:

* a value whose denominator is zero is undefined and is ``nan``: the
  sensitivity of a class absent from ``y_true``, the precision of a class never
  predicted, the specificity of a class every image belongs to, the F1 of a class
  neither present nor predicted, the ROC AUC of a class without positives or
  without negatives (so every AUC of a single image), and the accuracy of no images;
* macro and weighted averages are over the classes where the value is defined
  (``nan`` when none is): scikit-learn's ``zero_division=np.nan``;
* the ROC AUC counts tied scores one half (Mann-Whitney, as scikit-learn's
  ``roc_auc_score``); a column with a non-finite probability has no AUC;
* the headline ``auc`` is the positive class's one-vs-rest AUC when there is a
  positive class (:func:`record`), else the macro AUC.

Adding a metric is one :class:`MetricSpec` in :data:`METRICS` plus its line in
``docs/reports.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "MetricSpec",
    "METRICS",
    "Tally",
    "predicted_class",
    "check_inputs",
    "evaluate",
    "metric",
    "record",
    "record_keys",
    "headline_auc_key",
]


def predicted_class(y_prob: np.ndarray) -> np.ndarray:
    """The most probable class of each row; the lowest class index on ties."""
    return np.asarray(y_prob).argmax(axis=-1)


def check_inputs(y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Validate and convert metric inputs.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: probabilities, shape ``(N, C)``.
        y_pred: predicted class indices, shape ``(N,)``; default :func:`predicted_class`.

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
    y_pred = predicted_class(y_prob) if y_pred is None else np.asarray(y_pred).astype(np.int64, copy=False)
    if y_pred.shape != y_true.shape:
        raise ValueError(f"y_pred must have shape {y_true.shape}, got {y_pred.shape}")
    n_classes = y_prob.shape[1]
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} holds class indices outside 0..{n_classes - 1}")
    return y_true, y_prob, y_pred


class Tally:
    """What the metric definitions read: weighted confusion matrices and the scores they rank.

    Args:
        y_true, y_prob, y_pred: checked inputs (see :func:`check_inputs`).
        weights: per-image weights, ``(N,)`` or ``(B, N)``; default one each.

    Attributes:
        confusion: ``(B, C, C)`` weighted counts, rows = true class, columns = predicted class.
        tp, fp, fn, tn, support: ``(B, C)`` one-vs-rest counts per class.
        total: ``(B,)`` total weight.
    """

    def __init__(self, y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray,
                 weights: np.ndarray | None = None) -> None:
        n, c = y_prob.shape
        self.y_true, self.y_prob = y_true, y_prob
        w = np.ones((1, n)) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1, n)
        self.weights = w
        rows = np.arange(w.shape[0])[:, None] * (c * c)
        cells = np.broadcast_to(rows + (y_true * c + y_pred)[None, :], w.shape)
        self.confusion = np.bincount(cells.ravel(), weights=w.ravel(), minlength=w.shape[0] * c * c).reshape(-1, c, c)
        self.tp = np.diagonal(self.confusion, axis1=1, axis2=2)
        self.support = self.confusion.sum(2)
        self.fp = self.confusion.sum(1) - self.tp
        self.fn = self.support - self.tp
        self.total = self.support.sum(1)
        self.tn = self.total[:, None] - self.tp - self.fp - self.fn


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, ``nan`` where ``den`` is zero (the degenerate-case rule)."""
    num, den = np.broadcast_arrays(np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64))
    return np.divide(num, den, out=np.full(num.shape, np.nan), where=den > 0)


def _accuracy(t: Tally) -> np.ndarray:
    return _ratio(t.tp.sum(1), t.total)


def _precision(t: Tally) -> np.ndarray:
    return _ratio(t.tp, t.tp + t.fp)


def _sensitivity(t: Tally) -> np.ndarray:
    return _ratio(t.tp, t.tp + t.fn)


def _specificity(t: Tally) -> np.ndarray:
    return _ratio(t.tn, t.tn + t.fp)


def _f1(t: Tally) -> np.ndarray:
    return _ratio(2 * t.tp, 2 * t.tp + t.fp + t.fn)


def _auc(t: Tally) -> np.ndarray:
    """One-vs-rest ROC AUC per class: the Mann-Whitney statistic on weights, ties counting one half."""
    out = np.full((t.weights.shape[0], t.y_prob.shape[1]), np.nan)
    for k in range(t.y_prob.shape[1]):
        scores = t.y_prob[:, k]
        if not np.isfinite(scores).all():
            continue
        order = np.argsort(scores, kind="stable")
        ranked = scores[order]
        starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # groups of tied scores
        positive = t.y_true[order] == k
        w = t.weights[:, order]
        w_pos = np.add.reduceat(np.where(positive, w, 0.0), starts, axis=1)
        w_neg = np.add.reduceat(np.where(positive, 0.0, w), starts, axis=1)
        below = np.cumsum(w_neg, axis=1) - w_neg  # negatives with a strictly lower score
        wins = (w_pos * (below + 0.5 * w_neg)).sum(1)
        out[:, k] = _ratio(wins, w_pos.sum(1) * w_neg.sum(1))
    return out


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name, how to show it, and its one definition.

    Attributes:
        name: the key (``accuracy``; per class ``<name>/<class>``).
        label: how reports show it.
        per_class: one value per class (one-vs-rest) or one value overall.
        averages: the averages over classes reported as ``<average>_<name>`` (``macro``, ``weighted``).
        compute: :class:`Tally` -> ``(B,)`` or, per class, ``(B, C)`` values.
        doc: the definition in words (docs/reports.md repeats it).
    """

    name: str
    label: str
    per_class: bool
    averages: tuple[str, ...]
    compute: Callable[[Tally], np.ndarray]
    doc: str


#: every metric cxrkit computes, in display order.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("accuracy", "Accuracy", False, (), _accuracy, "images whose predicted class is the true class / images"),
    MetricSpec("precision", "Precision", True, ("macro", "weighted"), _precision,
               "TP / (TP + FP); undefined for a class never predicted"),
    MetricSpec("sensitivity", "Sensitivity", True, ("macro", "weighted"), _sensitivity,
               "TP / (TP + FN), recall, the true-positive rate; undefined for a class without images"),
    MetricSpec("specificity", "Specificity", True, (), _specificity,
               "TN / (TN + FP); undefined when every image belongs to the class"),
    MetricSpec("f1", "F1", True, ("macro", "weighted"), _f1,
               "2 TP / (2 TP + FP + FN); undefined for a class neither present nor predicted"),
    MetricSpec("auc", "ROC AUC", True, ("macro",), _auc,
               "one-vs-rest ROC AUC of the class's probability (ties count one half); undefined without "
               "positives or without negatives"),
)


def _average(values: np.ndarray, support: np.ndarray, how: str) -> np.ndarray:
    """Mean over the classes where ``values`` is defined: plain (``macro``) or by support (``weighted``)."""
    defined = ~np.isnan(values)
    weights = np.where(defined, support if how == "weighted" else 1.0, 0.0)
    return _ratio((np.where(defined, values, 0.0) * weights).sum(-1), weights.sum(-1))


def evaluate(y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray | None = None, *,
             weights: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` on one set of predictions, or on ``B`` weighted sets at once.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: probabilities, shape ``(N, C)``.
        y_pred: predicted classes; default :func:`predicted_class`.
        weights: per-image weights ``(B, N)`` (e.g. bootstrap draw counts); default one set, one each.

    Returns:
        ``confusion`` ``(B, C, C)``, ``support`` ``(B, C)``, each metric's values (``(B,)`` or
        ``(B, C)``) and each declared average ``<average>_<name>`` ``(B,)``; ``B`` is 1 without weights.

    Raises:
        ValueError: invalid inputs (see :func:`check_inputs`).
    """
    y_true, y_prob, y_pred = check_inputs(y_true, y_prob, y_pred)
    if weights is not None and np.shape(weights)[-1] != y_true.size:
        raise ValueError(f"weights must have shape (B, {y_true.size}), got {np.shape(weights)}")
    tally = Tally(y_true, y_prob, y_pred, weights)
    out: dict[str, np.ndarray] = {"confusion": tally.confusion, "support": tally.support}
    for spec in METRICS:
        values = spec.compute(tally)
        out[spec.name] = values
        for how in spec.averages:
            out[f"{how}_{spec.name}"] = _average(values, tally.support, how)
    return out


def metric(name: str, y_true: np.ndarray, y_prob: np.ndarray, y_pred: np.ndarray | None = None, *,
           weights: np.ndarray | None = None) -> np.ndarray:
    """One metric of :data:`METRICS` (no averages), e.g. the accuracy of each calibration bin.

    Args:
        name: the metric's name (``accuracy``, ``sensitivity``...).
        y_true, y_prob, y_pred, weights: as for :func:`evaluate`.

    Returns:
        ``(B,)`` or, per class, ``(B, C)`` values.

    Raises:
        ValueError: no such metric, or invalid inputs.
    """
    specs = {spec.name: spec for spec in METRICS}
    if name not in specs:
        raise ValueError(f"no metric {name!r}; choose one of {', '.join(specs)}")
    y_true, y_prob, y_pred = check_inputs(y_true, y_prob, y_pred)
    return specs[name].compute(Tally(y_true, y_prob, y_pred, weights))


def headline_auc_key(classes: Sequence[str], positive: int | None) -> str:
    """Which AUC the headline ``auc`` is: ``auc/<positive class>`` with a positive class, else ``macro_auc``."""
    return "macro_auc" if positive is None else f"auc/{classes[positive]}"


def record_keys(classes: Sequence[str]) -> list[str]:
    """The keys of :func:`record`, in order (without ``confusion_matrix``)."""
    keys = []
    for spec in METRICS:
        keys += [f"{spec.name}/{c}" for c in classes] if spec.per_class else [spec.name]
        keys += [f"{how}_{spec.name}" for how in spec.averages]
        if spec.name == "auc":
            keys.append("auc")
    return keys


def record(values: Mapping[str, np.ndarray], classes: Sequence[str], positive: int | None,
           row: int | None = 0) -> dict[str, float | np.ndarray]:
    """Named values of :func:`evaluate`'s output: the keys ``metrics.json`` and the reports use.

    Args:
        values: :func:`evaluate`'s output.
        classes: class names, index order.
        positive: the positive class index, or ``None`` (the headline ``auc`` is then the macro AUC).
        row: which weighted set; ``None`` keeps every set (arrays of shape ``(B,)``).

    Returns:
        ``accuracy``; ``<name>/<class>`` per class; ``<average>_<name>``; ``auc`` (see
        :func:`headline_auc_key`); floats for one ``row``.
    """
    pick = (lambda a: a) if row is None else (lambda a: float(a[row]))
    out: dict[str, float | np.ndarray] = {}
    for spec in METRICS:
        v = values[spec.name]
        if spec.per_class:
            out.update({f"{spec.name}/{c}": pick(v[:, k]) for k, c in enumerate(classes)})
        else:
            out[spec.name] = pick(v)
        out.update({f"{how}_{spec.name}": pick(values[f"{how}_{spec.name}"]) for how in spec.averages})
    out["auc"] = out[headline_auc_key(classes, positive)]
    return out

