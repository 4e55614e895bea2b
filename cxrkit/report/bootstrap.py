"""Percentile bootstrap confidence intervals for the report's headline metrics.

Images are resampled with replacement (``n_resamples`` resamples of the
validation set, seeded with :class:`numpy.random.Generator`). Each resample's
metrics are computed in one vectorised pass per block of resamples:
confusion matrices by :func:`numpy.bincount`, ROC AUC by the Mann-Whitney
statistic on resample weights (ties count one half, exactly as
scikit-learn's ``roc_auc_score``). :func:`resample_values` is the same
computation scikit-learn would do on each resample; tests check that.

Precision, recall, F1 and specificity follow scikit-learn's
``zero_division=0``. A resample in which a class has no positives or no
negatives gives ``nan`` for that AUC (and for the macro AUC); such resamples
are left out of that metric's interval and counted in ``n_skipped``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from cxrkit.report.metrics import check_inputs, headline

__all__ = ["Interval", "bootstrap_intervals", "resample_values"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval.

    Attributes:
        low: lower percentile bound (nan when no resample gave a value).
        high: upper percentile bound.
        confidence: e.g. 0.95.
        n_resamples: resamples drawn.
        n_skipped: resamples left out because the metric was undefined (nan) there.
    """

    low: float
    high: float
    confidence: float
    n_resamples: int
    n_skipped: int

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies within ``[low, high]`` (False for nan bounds)."""
        return bool(self.low <= value <= self.high)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def resample_values(
    y_true: np.ndarray, y_pred: np.ndarray, y_prob: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics of each resample, vectorised.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_pred: predicted class indices, shape ``(N,)``.
        y_prob: probabilities, shape ``(N, C)``.
        index: resample indices into the ``N`` rows, shape ``(B, M)``.

    Returns:
        ``accuracy``, ``macro_precision``, ``macro_recall``, ``macro_f1``,
        ``macro_auc`` with shape ``(B,)`` and ``precision``, ``recall``, ``f1``,
        ``specificity``, ``auc`` with shape ``(B, C)``.
    """
    n_rows, n_classes = y_prob.shape
    n_boot, size = index.shape
    rows = np.arange(n_boot)[:, None]
    t, p = y_true[index], y_pred[index]
    cm = np.bincount((rows * n_classes * n_classes + t * n_classes + p).ravel(), minlength=n_boot * n_classes**2)
    cm = cm.reshape(n_boot, n_classes, n_classes).astype(np.float64)
    tp = np.diagonal(cm, axis1=1, axis2=2)
    support, predicted = cm.sum(2), cm.sum(1)
    fp, fn = predicted - tp, support - tp
    tn = size - tp - fp - fn
    out = {
        "accuracy": tp.sum(1) / size,
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, support),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "specificity": _safe_div(tn, tn + fp),
    }
    for name in ("precision", "recall", "f1"):
        out[f"macro_{name}"] = out[name].mean(1)

    # resample weights: how often each original row was drawn in each resample
    weights = np.bincount((rows * n_rows + index).ravel(), minlength=n_boot * n_rows).reshape(n_boot, n_rows)
    auc = np.empty((n_boot, n_classes))
    for k in range(n_classes):
        order = np.argsort(y_prob[:, k], kind="stable")
        scores = y_prob[order, k]
        starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])  # groups of tied scores
        positive = (y_true[order] == k).astype(np.float64)
        w = weights[:, order].astype(np.float64)
        w_pos = np.add.reduceat(w * positive, starts, axis=1)
        w_neg = np.add.reduceat(w * (1.0 - positive), starts, axis=1)
        below = np.cumsum(w_neg, axis=1) - w_neg  # negatives with a strictly lower score
        wins = (w_pos * (below + 0.5 * w_neg)).sum(1)
        pairs = w_pos.sum(1) * w_neg.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc[:, k] = np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)
    out["auc"] = auc
    out["macro_auc"] = auc.mean(1)  # nan when any class is undefined in that resample
    return out


def bootstrap_intervals(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    y_pred: np.ndarray | None = None,
    *,
    classes: Sequence[str],
    positive: int | None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    block: int = 200,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of the headline metrics.

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_prob: softmax probabilities, shape ``(N, C)``.
        y_pred: predicted classes; default ``argmax(y_prob)``.
        classes: class names (select the headline keys, see :func:`cxrkit.report.metrics.headline_labels`).
        positive: positive class index, or None for one-vs-rest on every class.
        n_resamples: number of resamples (>= 1).
        seed: seed of the resampling; the same seed gives the same intervals.
        confidence: interval coverage in (0, 1).
        block: resamples computed at once (bounds memory to about ``block * N * 8`` bytes).

    Returns:
        Headline key -> :class:`Interval`.

    Raises:
        ValueError: invalid inputs, ``n_resamples < 1`` or ``confidence`` outside (0, 1).
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y_true, y_prob, y_pred = check_inputs(y_true, y_prob, y_pred)
    rng = np.random.default_rng(seed)
    n = y_true.size
    chunks: list[Mapping[str, np.ndarray]] = []
    for start in range(0, n_resamples, block):
        index = rng.integers(0, n, size=(min(block, n_resamples - start), n))
        chunks.append(headline(resample_values(y_true, y_pred, y_prob, index), classes, positive))
    alpha = (1 - confidence) / 2
    intervals = {}
    for key in chunks[0]:
        values = np.concatenate([c[key] for c in chunks])
        valid = values[~np.isnan(values)]
        skipped = int(values.size - valid.size)
        if valid.size:
            low, high = np.percentile(valid, [100 * alpha, 100 * (1 - alpha)])
        else:
            low = high = math.nan
        if skipped:
            logger.info("bootstrap: %s undefined in %d of %d resamples (a class missing); skipped",
                        key, skipped, n_resamples)
        intervals[key] = Interval(float(low), float(high), confidence, n_resamples, skipped)
    return intervals
