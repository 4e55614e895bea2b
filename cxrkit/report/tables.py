"""Report tables in the layouts of the study (Hossain et al. 2022).

* Table 5: per-class precision, sensitivity (recall), F1 and support with overall accuracy,
  macro and weighted averages (the rows of scikit-learn's ``classification_report``);
* Table 6: maximum, minimum and mean accuracy over the epochs, with the epoch
  of the maximum and of the minimum, for training and for validation;
* the headline metrics with bootstrap confidence intervals, one-vs-rest
  sensitivity / specificity / AUC, the confusion matrix and split counts.

Builders return :class:`~cxrkit.report.document.Table` blocks with formatted cells.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from cxrkit.report.bootstrap import Interval
from cxrkit.report.document import Table, fmt, fmt_ci
from cxrkit.report.metrics import ClassificationMetrics

__all__ = [
    "classification_table",
    "headline_table",
    "one_vs_rest_table",
    "confusion_table",
    "accuracy_summary",
    "accuracy_summary_table",
    "counts_table",
]


def classification_table(m: ClassificationMetrics) -> Table:
    """Table 5 for one run: a row per class, then accuracy, macro avg and weighted avg.

    Args:
        m: the run's metrics.

    Returns:
        Columns Class, Precision, Sensitivity, F1, Support.
    """
    rows = [[c, fmt(m.precision[k]), fmt(m.sensitivity[k]), fmt(m.f1[k]), str(int(m.support[k]))]
            for k, c in enumerate(m.classes)]
    rows.append(["accuracy", "", "", fmt(m.accuracy), str(m.n)])
    for name, avg in (("macro avg", m.macro), ("weighted avg", m.weighted)):
        rows.append([name, fmt(avg["precision"]), fmt(avg["sensitivity"]), fmt(avg["f1"]), str(m.n)])
    return Table(["Class", "Precision", "Sensitivity", "F1", "Support"], rows)


def headline_table(point: Mapping[str, float], intervals: Mapping[str, Interval] | None,
                   labels: Mapping[str, str]) -> Table:
    """Headline metrics with their bootstrap confidence intervals.

    Args:
        point: key -> point estimate.
        intervals: key -> interval, or None when the bootstrap was switched off.
        labels: key -> display label (also the row order).

    Returns:
        Columns Metric, Value, 95 % CI (the confidence from the intervals).
    """
    conf = next(iter(intervals.values())).confidence if intervals else 0.95
    rows = []
    for key, label in labels.items():
        ci = intervals.get(key) if intervals else None
        rows.append([label, fmt(point[key]), fmt_ci(ci.low, ci.high) if ci else "not computed"])
    return Table(["Metric", "Value", f"{conf:.0%} CI"], rows)


def one_vs_rest_table(m: ClassificationMetrics) -> Table:
    """Sensitivity, specificity and ROC AUC of each class against the rest.

    Args:
        m: the run's metrics.

    Returns:
        Columns Class, Sensitivity, Specificity, ROC AUC, Support.
    """
    rows = [[c, fmt(m.sensitivity[k]), fmt(m.specificity[k]), fmt(m.auc[k]), str(int(m.support[k]))]
            for k, c in enumerate(m.classes)]
    return Table(["Class", "Sensitivity", "Specificity", "ROC AUC", "Support"], rows)


def confusion_table(m: ClassificationMetrics) -> Table:
    """The confusion matrix as counts (rows = true class, columns = predicted class)."""
    rows = [[c, *(str(int(v)) for v in m.confusion[k]), str(int(m.confusion[k].sum()))]
            for k, c in enumerate(m.classes)]
    return Table(["True \\ predicted", *m.classes, "Total"], rows)


def accuracy_summary(epochs: Sequence[Mapping[str, float]], key: str) -> dict[str, float | int | None]:
    """Maximum, minimum and mean of one per-epoch metric, with the epochs of the extremes.

    Args:
        epochs: per-epoch rows with ``epoch`` and ``key``.
        key: e.g. ``val_accuracy``.

    Returns:
        ``max``, ``max_epoch``, ``min``, ``min_epoch``, ``mean``, ``n_epochs`` (epochs with a
        value); the first epoch wins ties; nan / None when no epoch has a value.
    """
    pairs = [(int(r["epoch"]), float(r[key])) for r in epochs if not math.isnan(r.get(key, math.nan))]
    if not pairs:
        return {"max": math.nan, "max_epoch": None, "min": math.nan, "min_epoch": None, "mean": math.nan, "n_epochs": 0}
    epoch_numbers, values = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    return {
        "max": float(values.max()),
        "max_epoch": int(epoch_numbers[values.argmax()]),
        "min": float(values.min()),
        "min_epoch": int(epoch_numbers[values.argmin()]),
        "mean": float(values.mean()),
        "n_epochs": len(pairs),
    }


def accuracy_summary_table(runs: Sequence[tuple[str, Sequence[Mapping[str, float]]]],
                           label_header: str | None = None) -> Table:
    """Table 6: accuracy summary over the epochs, training and validation rows per run.

    Args:
        runs: ``(label, per-epoch rows)`` per run.
        label_header: header of a leading label column (e.g. "Source"); omitted when None.

    Returns:
        Columns [label,] Set, Max, Max at epoch, Min, Min at epoch, Mean, Epochs.
    """
    rows = []
    for label, epochs in runs:
        for i, (set_name, key) in enumerate((("Training", "train_accuracy"), ("Validation", "val_accuracy"))):
            s = accuracy_summary(epochs, key)
            cells = [set_name, fmt(s["max"]), fmt(s["max_epoch"]), fmt(s["min"]), fmt(s["min_epoch"]),
                     fmt(s["mean"]), str(s["n_epochs"])]
            rows.append(([label if i == 0 else ""] if label_header else []) + cells)
    headers = ["Set", "Max", "Max at epoch", "Min", "Min at epoch", "Mean", "Epochs"]
    return Table(([label_header] if label_header else []) + headers, rows)


def counts_table(counts: Mapping[str, Any], classes: Sequence[str]) -> Table | None:
    """Images per class and split from ``summary.json``.

    Args:
        counts: ``{split: {class: count}}``.
        classes: class names (column order; classes not in ``classes`` are appended).

    Returns:
        Columns Split, one per class, Total; None when ``counts`` has no usable split.
    """
    splits = {s: c for s, c in counts.items() if isinstance(c, Mapping)}
    if not splits:
        return None
    names = list(classes) + sorted({k for c in splits.values() for k in c} - set(classes))
    rows = []
    for split, per_class in splits.items():
        values = [per_class.get(c) for c in names]
        total = sum(int(v) for v in values if isinstance(v, (int, float)))
        rows.append([str(split), *("–" if v is None else str(int(v)) for v in values), str(total)])
    return Table(["Split", *names, "Total"], rows)
