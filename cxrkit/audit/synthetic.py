"""Constructed data with a known answer for the shortcut probes.

:func:`make_shortcut_dataset` draws synthetic radiographs (:func:`cxrkit.demo.synthetic_xray`)
in the COVID-19 Radiography Database's NESTED layout, with lung masks beside
the images as the collection ships them (``COVID/images/COVID-1.png`` and
``COVID/masks/COVID-1.png``; masks smaller than the images, as the real ones
are 256 px for 299 px images). Where the class lives is chosen:

* ``signal="marker"``: both classes are the same healthy thorax; only ``COVID``
  images carry a bright "L" marker burned into the top-left corner, outside the
  lungs (the kind of text marker DeGrave et al. found models reading). A model
  that learns this set can only have learned a shortcut;
* ``signal="lungs"``: no marker; ``COVID`` images have bright opacities inside
  both lung fields. A model that learns this set looks where a radiologist would.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

__all__ = ["make_shortcut_dataset", "SIGNALS", "draw_marker"]

logger = logging.getLogger(__name__)

SIGNALS = ("marker", "lungs")
_README = """SYNTHETIC DATA - NOT REAL PATIENTS, NOT FOR ANY MEDICAL USE.

{n} images drawn by cxrkit.audit.synthetic.make_shortcut_dataset (signal={signal!r},
seed {seed}) to test the shortcut probes of `cxrkit audit`: {what}
Lung masks are in masks/ beside images/, as in the COVID-19 Radiography Database.
"""
_WHAT = {
    "marker": "the class is ONLY a bright 'L' marker in the top-left corner of the COVID images.",
    "lungs": "the class is ONLY a set of bright opacities inside the lungs of the COVID images.",
}


def draw_marker(image: np.ndarray) -> np.ndarray:
    """Burn a bright "L" into the top-left corner (about 15% of the side), outside the lung fields."""
    out = image.copy()
    s = image.shape[0]
    top, left, height, width, stroke = round(0.04 * s), round(0.04 * s), round(0.16 * s), round(0.12 * s), max(
        2, round(0.04 * s))
    out[top:top + height, left:left + stroke] = 255
    out[top + height - stroke:top + height, left:left + width] = 255
    return out


def _lung_opacities(image: np.ndarray, lungs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    s = image.shape[0]
    rows, cols = np.nonzero(lungs)
    blobs = np.zeros(image.shape, dtype=np.float64)
    for side in (cols < s / 2, cols >= s / 2):
        r, c = rows[side], cols[side]
        for _ in range(2):
            k = rng.integers(len(r))
            blobs[r[k], c[k]] = 1.0
    blobs = gaussian_filter(blobs, sigma=0.05 * s)
    blobs = np.where(lungs, blobs / max(blobs.max(), 1e-9), 0.0)
    return np.clip(image + 150.0 * blobs, 0, 255).astype(np.uint8)


def make_shortcut_dataset(root: str | Path, signal: str, per_class: int = 40, size: int = 64, seed: int = 0,
                          mask_size: int | None = None) -> Path:
    """Write a two-class set (``COVID``, ``Normal``) whose class lives only where ``signal`` says.

    Args:
        root: folder to create the dataset in.
        signal: ``marker`` (class = a corner marker outside the lungs) or ``lungs``
            (class = opacities inside the lungs).
        per_class: images per class.
        size: image side in pixels.
        seed: random seed.
        mask_size: side of the mask files (default ``size * 4 // 5``, smaller than the images).

    Returns:
        The dataset folder (``--dataset radiography --dataset_dir`` reads it).

    Raises:
        ValueError: an unknown ``signal``, fewer than 5 images per class or images under 32 px.
    """
    from PIL import Image

    from cxrkit.demo import synthetic_xray

    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {', '.join(SIGNALS)}, got {signal!r}")
    if int(per_class) < 5 or int(size) < 32:
        raise ValueError(f"need per_class >= 5 and size >= 32, got {per_class} and {size}")
    folder = Path(root).expanduser().resolve() / "COVID-19_Radiography_Dataset"
    mask_side = int(mask_size or size * 4 // 5)
    rng = np.random.default_rng(int(seed))
    for cls in ("COVID", "Normal"):
        (folder / cls / "images").mkdir(parents=True, exist_ok=True)
        (folder / cls / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(1, int(per_class) + 1):
            pixels, lungs = synthetic_xray(False, int(size), rng, return_lungs=True)
            if cls == "COVID":
                pixels = draw_marker(pixels) if signal == "marker" else _lung_opacities(pixels, lungs, rng)
            Image.fromarray(pixels, mode="L").save(folder / cls / "images" / f"{cls}-{i}.png")
            mask = Image.fromarray((lungs * 255).astype(np.uint8), mode="L")
            mask.resize((mask_side, mask_side), Image.Resampling.NEAREST).save(folder / cls / "masks" / f"{cls}-{i}.png")
    (folder / "SYNTHETIC_DATA_README.txt").write_text(
        _README.format(n=2 * int(per_class), signal=signal, seed=int(seed), what=_WHAT[signal]), encoding="utf-8")
    logger.info("wrote %d synthetic %s-signal images to %s", 2 * int(per_class), signal, folder)
    return folder
