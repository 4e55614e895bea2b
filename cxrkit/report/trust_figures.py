"""Figures of the trust sections: reliability diagrams and near-duplicate image pairs (matplotlib, Agg)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["reliability_figure", "pairs_figure"]

logger = logging.getLogger(__name__)


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, format="png", metadata={"Software": None})
    return path


def reliability_figure(panels: Mapping[str, Mapping[str, np.ndarray]], eces: Mapping[str, float], path: Path,
                       split: str) -> Path:
    """Reliability diagrams side by side: accuracy per confidence bin against the diagonal, with counts.

    Args:
        panels: title -> :func:`cxrkit.calibration.reliability_bins` output (e.g. uncalibrated, calibrated).
        eces: title -> ECE (shown in the panel).
        path: the PNG.
        split: which images (for the title).
    """
    fig = Figure(figsize=(4.6 * len(panels), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(panels), squeeze=False, height_ratios=[3, 1], sharex=True)
    for col, (title, bins) in enumerate(panels.items()):
        edges = bins["edges"]
        centres = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        used = bins["count"] > 0
        ax = axes[0, col]
        ax.plot([0, 1], [0, 1], color="black", linestyle=":", linewidth=1, label="perfect calibration")
        ax.bar(centres[used], bins["accuracy"][used], width=width * 0.9, color="#2b7bba", alpha=0.85,
               label="accuracy in the bin")
        ax.scatter(centres[used], bins["confidence"][used], marker="_", s=300, linewidths=2.5, color="#d62728",
                   zorder=3, label="mean confidence in the bin")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}: ECE {eces[title]:.3f}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
        counts = axes[1, col]
        counts.bar(centres, bins["count"], width=width * 0.9, color="#777777")
        counts.set_xlabel("confidence of the predicted class")
        counts.set_ylabel("images")
    fig.suptitle(f"Reliability diagram ({split} images)", fontsize=11)
    return _save(fig, path)


def _thumb(path: Path, side: int = 160) -> np.ndarray | None:
    from PIL import Image

    from cxrkit.data.readers import load_image

    try:
        grey = load_image(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: leave the cell empty
        logger.debug("no thumbnail of %s: %s", path, exc)
        return None
    return np.asarray(Image.fromarray((np.clip(grey, 0, 1) * 255).astype(np.uint8)).resize((side, side)))


def pairs_figure(pairs: Sequence[Mapping], root: Path, path: Path, limit: int = 8) -> Path | None:
    """Near-duplicate pairs as thumbnails, two per row, with their parts, classes and Hamming distance.

    Args:
        pairs: ``{"a", "b", "distance", "parts"?, "classes"?}`` with paths relative to ``root``.
        root: the dataset folder.
        path: the PNG.
        limit: pairs shown at most.

    Returns:
        ``path``, or ``None`` when no image of any pair can be read (dataset moved).
    """
    shown = []
    for pair in list(pairs)[:limit]:
        a, b = _thumb(root / pair["a"]), _thumb(root / pair["b"])
        if a is not None and b is not None:
            shown.append((pair, a, b))
    if not shown:
        return None
    fig = Figure(figsize=(6.4, 3.1 * len(shown)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for row, (pair, a, b) in enumerate(shown):
        parts = pair.get("parts") or ["?", "?"]
        classes = pair.get("classes") or ["", ""]
        for col, (img, name, part, cls) in enumerate(((a, pair["a"], parts[0], classes[0]),
                                                      (b, pair["b"], parts[1], classes[1]))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255)
            ax.set_axis_off()
            ax.set_title(f"{Path(name).name}\n{part}{' / ' + cls if cls else ''}", fontsize=8)
        axes[row, 0].text(1.02, -0.06, f"{pair['distance']} of 256 bits differ", transform=axes[row, 0].transAxes,
                          fontsize=8, ha="center")
    fig.suptitle("Near-duplicate images (perceptual hash)", fontsize=10)
    return _save(fig, path)
