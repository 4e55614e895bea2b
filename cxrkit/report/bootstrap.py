"""Percentile bootstrap confidence intervals for the report's headline metrics.

Images are resampled with replacement (``n_resamples`` resamples of the
validation set, seeded with :class:`numpy.random.Generator`). A resample is how
often each image was drawn, so a block of resamples is one weight matrix and
:func:`cxrkit.metrics.evaluate` computes every resample's metrics in one
vectorised pass: the same definitions, and the same rule for undefined values,
as the point estimates, ``metrics.json`` and the training log.

A resample in which a headline metric is undefined (``nan``, e.g. a class drawn
no image for its sensitivity or AUC) is left out of that metric's interval and
counted in ``n_skipped``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from cxrkit.metrics import check_inputs, evaluate
from cxrkit.report.metrics import headline

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


def resample_values(
    y_true: np.ndarray, y_pred: np.ndarray, y_prob: np.ndarray, index: np.ndarray
) -> dict[str, np.ndarray]:
    """Metrics of each resample, vectorised (:func:`cxrkit.metrics.evaluate` on draw counts).

    Args:
        y_true: true class indices, shape ``(N,)``.
        y_pred: predicted class indices, shape ``(N,)``.
        y_prob: probabilities, shape ``(N, C)``.
        index: resample indices into the ``N`` rows, shape ``(B, M)``.

    Returns:
        :func:`cxrkit.metrics.evaluate`'s output with ``B`` rows.
    """
    n_rows = y_prob.shape[0]
    n_boot = index.shape[0]
    rows = np.arange(n_boot)[:, None] * n_rows
    weights = np.bincount((rows + index).ravel(), minlength=n_boot * n_rows).reshape(n_boot, n_rows)
    return evaluate(y_true, y_prob, y_pred, weights=weights)


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
