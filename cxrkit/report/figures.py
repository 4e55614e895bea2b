"""Report figures (matplotlib, Agg backend): ROC curves, confusion matrices, training curves.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with an explicit
Agg canvas: no display, no pyplot global state, safe in threads and on
headless servers.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrkit.report.metrics import roc_points

__all__ = [
    "roc_figure",
    "confusion_figure",
    "curves_figure",
    "comparison_curves_figure",
    "confusion_grid_figure",
    "curve_arrays",
    "CurveArrays",
]

#: key -> (epochs, mean, std or None)
CurveArrays = Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]

_PANELS = (("train_loss", "Training loss"), ("val_loss", "Validation loss"),
           ("train_accuracy", "Training accuracy"), ("val_accuracy", "Validation accuracy"))
_STYLES = ("-", "--", "-.", ":")


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png", metadata={"Software": None})
    return path


def _color(i: int) -> tuple[str, str]:
    return f"C{i % 10}", _STYLES[(i // 10) % len(_STYLES)]


def roc_figure(y_true: np.ndarray, y_prob: np.ndarray, classes: Sequence[str], positive: int | None,
               auc: Sequence[float], path: Path, macro_auc: float = math.nan) -> Path:
    """ROC curve of the positive class (binary) or one curve per class one-vs-rest (multiclass).

    Args:
        y_true: true class indices.
        y_prob: probabilities, shape ``(N, C)``.
        classes: class names.
        positive: the positive class index for a binary run; None draws every class.
        auc: the per-class AUC values shown in the legend.
        path: the PNG to write.
        macro_auc: shown in the title for multiclass runs.

    Returns:
        ``path``.
    """
    fig, axes = _new(5.2, 4.8)
    ax = axes[0, 0]
    binary = positive is not None and len(classes) == 2
    chosen = [positive] if binary else range(len(classes))
    for i, k in enumerate(chosen):
        points = roc_points(y_true, y_prob, k)
        color, style = _color(i)
        if points is None:
            ax.plot([], [], color=color, label=f"{classes[k]}: undefined (one class only)")
            continue
        ax.plot(points[0], points[1], color=color, linestyle=style, lw=2,
                label=f"{classes[k]}{'' if binary else ' vs rest'} (AUC {auc[k]:.4f})")
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, linestyle="--", label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", aspect="equal")
    title = f"ROC, positive class {classes[positive]}" if binary else "ROC, one-vs-rest"
    if not binary:
        title += f" (macro AUC {'n/a' if math.isnan(macro_auc) else f'{macro_auc:.4f}'})"
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def _matrix(ax, values: np.ndarray, labels: np.ndarray, classes: Sequence[str], title: str, vmax: float) -> None:
    ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax if vmax > 0 else 1)
    n = len(classes)
    for i in range(n):
        for j in range(n):
            dark = vmax > 0 and values[i, j] > 0.55 * vmax
            ax.text(j, i, labels[i, j], ha="center", va="center", fontsize=10 if n <= 4 else 7,
                    color="white" if dark else "black")
    ax.set_xticks(range(n), classes, rotation=30 if n > 2 else 0, ha="right" if n > 2 else "center")
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="Predicted class", ylabel="True class", title=title)


def _row_normalised(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    text = np.array([[f"{v:.2f}" if rows[i, 0] else "n/a" for v in r] for i, r in enumerate(norm)])
    return norm, text


def confusion_figure(cm: np.ndarray, classes: Sequence[str], path: Path, title: str | None = None) -> Path:
    """Confusion matrix as counts and row-normalised (sensitivity per true class), side by side.

    Args:
        cm: ``(C, C)`` counts, rows = true class.
        classes: class names.
        path: the PNG to write.
        title: optional title above both panels.

    Returns:
        ``path``.
    """
    n = len(classes)
    fig, axes = _new(4.0 + 2.2 * n, 2.4 + 0.9 * n, ncols=2)
    _matrix(axes[0, 0], cm, cm.astype(str), classes, "Counts", float(cm.max()))
    norm, text = _row_normalised(cm)
    _matrix(axes[0, 1], norm, text, classes, "Row-normalised (per true class)", 1.0)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def curve_arrays(runs: Sequence[Sequence[Mapping[str, float]]]) -> CurveArrays:
    """Per-epoch curves of one run, or mean and std across runs (k folds), aligned by epoch number.

    Args:
        runs: each run's per-epoch rows (``epoch``, ``train_loss``, ...).

    Returns:
        For each of ``train_loss``, ``val_loss``, ``train_accuracy``, ``val_accuracy``:
        ``(epochs, mean, std)``; ``std`` is None for a single run (sample std, ddof=1, otherwise).
    """
    epochs = sorted({int(r["epoch"]) for run in runs for r in run})
    out = {}
    for key, _ in _PANELS:
        table = np.full((len(runs), len(epochs)), np.nan)
        for i, run in enumerate(runs):
            for row in run:
                table[i, epochs.index(int(row["epoch"]))] = row.get(key, math.nan)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-nan epochs (e.g. no validation) stay nan
            mean = np.nanmean(table, 0)
            std = np.nanstd(table, 0, ddof=1) if len(runs) > 1 else None
        out[key] = (np.asarray(epochs), mean, std)
    return out


def curves_figure(epochs: Sequence[Mapping[str, float]], path: Path, best_epoch: int | None = None,
                  title: str | None = None) -> Path:
    """Training and validation loss (left) and accuracy (right) by epoch (the study's Figs 5-6).

    Args:
        epochs: per-epoch rows from ``metrics.json``.
        path: the PNG to write.
        best_epoch: marked with a vertical line when given.
        title: optional figure title.

    Returns:
        ``path``.
    """
    arrays = curve_arrays([epochs])
    fig, axes = _new(10, 3.8, ncols=2)
    for ax, kind, label in ((axes[0, 0], "loss", "Loss"), (axes[0, 1], "accuracy", "Accuracy")):
        for split, color in (("train", "C0"), ("val", "C1")):
            x, y, _ = arrays[f"{split}_{kind}"]
            ok = ~np.isnan(y)
            ax.plot(x[ok], y[ok], color=color, marker="o" if ok.sum() <= 30 else None, ms=3,
                    label="training" if split == "train" else "validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.5", linestyle=":", lw=1, label=f"best model (epoch {best_epoch})")
        ax.set(xlabel="Epoch", ylabel=label, title=f"{label} by epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def comparison_curves_figure(series: Mapping[str, CurveArrays], path: Path) -> Path:
    """2x2 panels (training loss, validation loss, training accuracy, validation accuracy), one line per source.

    The study's Fig 7. A k-fold group is drawn as its mean across folds with a ±1 std band.

    Args:
        series: label -> :func:`curve_arrays` of that source.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    fig, axes = _new(12, 8.5, ncols=2, nrows=2)
    for ax, (key, label) in zip(axes.ravel(), _PANELS):
        for i, (name, arrays) in enumerate(series.items()):
            x, mean, std = arrays[key]
            ok = ~np.isnan(mean)
            color, style = _color(i)
            ax.plot(x[ok], mean[ok], color=color, linestyle=style, lw=1.6, label=name)
            if std is not None:
                s = np.nan_to_num(std[ok])
                ax.fill_between(x[ok], mean[ok] - s, mean[ok] + s, color=color, alpha=0.15, lw=0)
        ax.set(xlabel="Epoch", ylabel=label.split()[-1].capitalize(), title=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 4), fontsize=9)
    return _save(fig, path)


def confusion_grid_figure(matrices: Mapping[str, np.ndarray], classes: Sequence[str], path: Path) -> Path:
    """Row-normalised confusion matrices of several sources in a grid (the study's Fig 8).

    Args:
        matrices: label -> ``(C, C)`` counts.
        classes: class names.
        path: the PNG to write.

    Returns:
        ``path``.
    """
    n = len(matrices)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    side = 1.0 + 0.8 * len(classes)
    fig, axes = _new(ncols * (side + 0.8), nrows * (side + 0.6), ncols=ncols, nrows=nrows)
    for ax, (name, cm) in zip(axes.ravel(), matrices.items()):
        norm, _ = _row_normalised(cm)
        n = len(classes)
        labels = np.array([[f"{norm[i, j]:.2f}\n({cm[i, j]})" for j in range(n)] for i in range(n)])
        _matrix(ax, norm, labels, classes, name, 1.0)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return _save(fig, path)
