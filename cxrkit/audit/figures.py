"""Figures of the shortcut audit (matplotlib, Agg): occlusion results, examples, Grad-CAM energy, thumbnails."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from cxrkit.audit.occlusion import Condition

__all__ = ["occlusion_figure", "examples_figure", "energy_figure", "least_inside_figure", "display"]

_LABELS = {
    ("baseline", "none"): "as they are",
    ("keep_lungs", "donor"): "lungs only\n(rest: another\nclass's image)",
    ("keep_lungs", "blur"): "lungs only\n(rest blurred)",
    ("remove_lungs", "donor"): "lungs removed\n(lungs: another\nclass's image)",
    ("remove_lungs", "blur"): "lungs removed\n(lungs blurred)",
}


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png", metadata={"Software": None})
    return path


def display(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A network input ``(C, H, W)`` as a grey ``(H, W)`` picture in ``[0, 1]`` (mean of channels, min-max)."""
    arr = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image, dtype=np.float64)
    grey = arr.mean(axis=0) if arr.ndim == 3 else arr
    lo, hi = np.percentile(grey, 0.5), np.percentile(grey, 99.5)
    return np.clip((grey - lo) / max(hi - lo, 1e-9), 0, 1)


def _contour(ax, mask: np.ndarray) -> None:
    if 0 < float(np.max(mask)) and float(np.min(mask)) < 1:
        ax.contour(np.asarray(mask, float), levels=[0.5], colors=["#ff3b30"], linewidths=1.0)


def occlusion_figure(conditions: Sequence[Condition], classes: Sequence[str], path: Path) -> Path:
    """Balanced accuracy and donor-following share under each occlusion, with the chance level."""
    fig, axes = _figure(11.5, 4.6, 1, 2)
    keys = [(c.direction, c.fill) for c in conditions]
    names = [_LABELS.get(k, f"{k[0]} ({k[1]})") for k in keys]
    colours = ["#555555" if k[0] == "baseline" else "#2b7bba" if k[0] == "keep_lungs" else "#d95f02" for k in keys]
    ax = axes[0, 0]
    values = [c.balanced_accuracy for c in conditions]
    bars = ax.bar(range(len(values)), values, color=colours)
    for bar, v in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, v + 0.02, f"{v:.2f}", ha="center", fontsize=9)
    ax.axhline(1.0 / len(classes), color="black", linestyle=":", linewidth=1,
               label=f"chance (1/{len(classes)} classes)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(range(len(values)), names, fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("balanced accuracy")
    ax.set_title("Accuracy when a region is replaced")
    ax = axes[0, 1]
    donor = [c for c in conditions if c.follows_donor is not None]
    if donor:
        vals = [c.follows_donor for c in donor]
        ax.bar(range(len(donor)), vals, color=["#2b7bba" if c.direction == "keep_lungs" else "#d95f02" for c in donor])
        for i, v in enumerate(vals):
            ax.text(i, v + 0.02, f"{v:.0%}", ha="center", fontsize=9)
        ax.set_xticks(range(len(donor)), [_LABELS[(c.direction, c.fill)] for c in donor], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("share predicted as the donor's class")
    ax.set_title("Does the prediction follow the transplanted region?")
    fig.suptitle("Occlusion probe: a model that learned the disease keeps its accuracy with only the lungs",
                 fontsize=10)
    return _save(fig, path)


def examples_figure(images: torch.Tensor, masks: np.ndarray, examples: Mapping[str, torch.Tensor],
                    titles: Sequence[str], path: Path) -> Path:
    """Up to 4 images as the model saw them under each occlusion (lung region outlined on the original)."""
    kinds = list(examples)
    n = min(len(images), *(len(v) for v in examples.values())) if examples else 0
    fig, axes = _figure(2.4 * (1 + len(kinds)), 2.6 * max(n, 1), max(n, 1), 1 + len(kinds))
    for i in range(n):
        ax = axes[i, 0]
        ax.imshow(display(images[i]), cmap="gray", vmin=0, vmax=1)
        _contour(ax, masks[i])
        ax.set_title(titles[i], fontsize=8)
        for j, kind in enumerate(kinds, start=1):
            axes[i, j].imshow(display(examples[kind][i]), cmap="gray", vmin=0, vmax=1)
            direction, fill = kind.split("/")
            axes[i, j].set_title(_LABELS[(direction, fill)].replace("\n", " ", 1).replace("\n", " "), fontsize=7,
                                 wrap=True)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("What the occlusion probe shows the model (red: lung region)", fontsize=10)
    return _save(fig, path)


def energy_figure(shares: np.ndarray, area_share: float, path: Path) -> Path:
    """Histogram of the per-image share of Grad-CAM energy inside the lungs, with the even-spread level."""
    fig, axes = _figure(6.4, 4.0)
    ax = axes[0, 0]
    valid = np.asarray(shares, float)
    valid = valid[np.isfinite(valid)]
    counts, _, _ = ax.hist(valid, bins=np.linspace(0, 1, 21), color="#2b7bba", edgecolor="white")
    ax.set_ylim(0, max(1.0, float(np.max(counts, initial=0))) * 1.3)  # headroom: the legend never hides a bar
    ax.axvline(area_share, color="#d95f02", linestyle="--", linewidth=1.5,
               label=f"even spread: lungs cover {area_share:.0%} of the image")
    if valid.size:
        ax.axvline(float(np.median(valid)), color="black", linewidth=1.5, label=f"median {np.median(valid):.0%}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of Grad-CAM energy inside the lung region")
    ax.set_ylabel("images")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("Where the evidence lies (right of the dashed line: more in the lungs than an even spread)",
                 fontsize=9)
    return _save(fig, path)


def least_inside_figure(images: torch.Tensor, cams: np.ndarray, masks: np.ndarray, shares: np.ndarray,
                        titles: Sequence[str], path: Path, count: int = 8) -> Path:
    """Thumbnails of the images with the least Grad-CAM energy inside the lungs, map overlaid."""
    order = [int(i) for i in np.argsort(np.nan_to_num(shares, nan=2.0))[:count]]
    cols = min(4, max(len(order), 1))
    rows = max(1, -(-len(order) // cols))
    fig, axes = _figure(2.6 * cols, 2.8 * rows, rows, cols)
    for ax, i in zip(axes.flat, order):
        ax.imshow(display(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.imshow(cams[i], cmap="jet", vmin=0, vmax=1, alpha=0.4)
        _contour(ax, masks[i])
        ax.set_title(f"{titles[i]}\n{shares[i]:.0%} inside the lungs", fontsize=7)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle("Images with the least evidence inside the lungs (Grad-CAM; red: lung region)", fontsize=10)
    return _save(fig, path)
