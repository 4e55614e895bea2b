"""The lung region of a radiograph: the collection's own lung mask when it ships one, else an anatomical prior.

* Masks: for an image ``<folder>/images/<name>``, the file ``<folder>/masks/<name>``
  (any image extension) is its lung mask: the COVID-19 Radiography Database's
  nested layout (``COVID/images/COVID-1.png`` with ``COVID/masks/COVID-1.png``).
  Its masks are 256 x 256 while the images are 299 x 299, so a mask is resized
  to its image (nearest neighbour), and checked before use: its aspect ratio must
  match the image's, it must cover 5-85% of the image, and it must sit on the
  darker, air-filled fields (mean brightness inside below outside, and not
  clearly lower when the mask is flipped upside down or transposed, which would
  betray a mask stored in another orientation). A mask that fails is not used:
  the prior is, and the reason is counted in the audit.
* Prior (:data:`PRIOR_ELLIPSES`): two ellipses where the lung fields of a
  frontal (PA/AP) chest film framed like the public collections lie, in
  coordinates relative to the image (row, column, half-height, half-width).
  It is coarse by design: it cannot follow a rotated, off-centre or lateral
  film, and it includes some mediastinum and misses the costophrenic angles of
  a large thorax. Reports say when the prior was used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["PRIOR_ELLIPSES", "LungRegion", "find_mask_file", "prior_mask", "check_mask", "lung_region",
           "MASK_SUFFIXES"]

logger = logging.getLogger(__name__)

#: (centre row, centre column, half-height, half-width), relative to the image, of the two lung fields.
PRIOR_ELLIPSES = ((0.45, 0.30, 0.32, 0.17), (0.45, 0.70, 0.32, 0.17))
MASK_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_MIN_AREA, _MAX_AREA = 0.05, 0.85
_ORIENTATION_MARGIN = 0.02
_ASPECT_TOLERANCE = 0.05


@dataclass(frozen=True)
class LungRegion:
    """The lung region of one image.

    Attributes:
        mask: boolean ``(rows, columns)`` array, True inside the lungs, on the original image's grid.
        source: ``mask`` (the collection's mask file) or ``prior`` (the anatomical prior).
        problem: why a mask file was not used (``None``: none found, or it was used).
    """

    mask: np.ndarray
    source: str
    problem: str | None = None


def find_mask_file(image: str | os.PathLike) -> Path | None:
    """The lung mask shipped beside ``<folder>/images/<name>`` as ``<folder>/masks/<name>``, or ``None``."""
    path = Path(image)
    if path.parent.name.lower() != "images":
        return None
    masks = path.parent.parent / "masks"
    if not masks.is_dir():
        masks = path.parent.parent / "Masks"
        if not masks.is_dir():
            return None
    for candidate in [masks / path.name] + [masks / (path.stem + s) for s in MASK_SUFFIXES]:
        if candidate.is_file():
            return candidate
    return None


def prior_mask(shape: tuple[int, int]) -> np.ndarray:
    """The anatomical prior (:data:`PRIOR_ELLIPSES`) as a boolean mask of ``shape``."""
    rows, cols = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:rows, 0:cols]
    yy = (yy + 0.5) / rows
    xx = (xx + 0.5) / cols
    mask = np.zeros((rows, cols), dtype=bool)
    for cy, cx, ry, rx in PRIOR_ELLIPSES:
        mask |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    return mask


def _contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """How much darker the image is inside the mask than outside (lungs are dark on a radiograph)."""
    if mask.all() or not mask.any():
        return -np.inf
    return float(image[~mask].mean() - image[mask].mean())


def check_mask(image: np.ndarray, mask_pixels: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Fit a lung mask file's pixels onto its image and check them.

    Args:
        image: the grey image, ``(rows, columns)`` in ``[0, 1]``.
        mask_pixels: the mask file's pixels (any size and range; bright = lung).

    Returns:
        ``(mask on the image's grid, None)`` or ``(None, the reason it cannot be used)``.
    """
    from PIL import Image

    pixels = np.asarray(mask_pixels, dtype=np.float64)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    if pixels.ndim != 2 or pixels.max() <= pixels.min():
        return None, "the mask is empty or not a 2D image"
    rows, cols = image.shape
    image_aspect, mask_aspect = cols / rows, pixels.shape[1] / pixels.shape[0]
    if abs(mask_aspect - image_aspect) / image_aspect > _ASPECT_TOLERANCE:
        return None, (f"the mask is {pixels.shape[1]}x{pixels.shape[0]} for an image of {cols}x{rows}: "
                      "another aspect ratio, so it cannot be the same frame")
    binary = pixels > (pixels.min() + pixels.max()) / 2
    fitted = np.asarray(Image.fromarray(binary.astype(np.uint8) * 255).resize((cols, rows), Image.Resampling.NEAREST))
    mask = fitted > 127
    share = float(mask.mean())
    if not _MIN_AREA <= share <= _MAX_AREA:
        return None, f"the mask covers {share:.0%} of the image (a lung mask covers {_MIN_AREA:.0%}-{_MAX_AREA:.0%})"
    contrast = _contrast(image, mask)
    if contrast <= 0:
        return None, "the mask's region is not darker than the rest (lungs are dark): wrong mask or inverted"
    alternatives = {"flipped upside down": mask[::-1]}
    if rows == cols:
        alternatives["transposed"] = mask.T
    for name, other in alternatives.items():
        if _contrast(image, other) > contrast + _ORIENTATION_MARGIN:
            return None, f"the mask fits the image better {name}: it is stored in another orientation"
    return mask, None


def lung_region(image_path: str | os.PathLike, image: np.ndarray, use_masks: bool = True) -> LungRegion:
    """The lung region of one image: its checked mask file when there is one, else the prior.

    Args:
        image_path: the image file (its mask is looked for beside it).
        image: the image's grey pixels, ``(rows, columns)`` in ``[0, 1]``.
        use_masks: look for mask files (``False``: always the prior).

    Returns:
        The :class:`LungRegion`.
    """
    from PIL import Image

    mask_file = find_mask_file(image_path) if use_masks else None
    if mask_file is not None:
        try:
            with Image.open(mask_file) as handle:
                pixels = np.asarray(handle.convert("L"))
            mask, problem = check_mask(image, pixels)
        except OSError as exc:
            mask, problem = None, f"the mask file cannot be read: {exc}"
        if mask is not None:
            return LungRegion(mask, "mask")
        logger.debug("lung mask %s not used: %s", mask_file, problem)
        return LungRegion(prior_mask(image.shape), "prior", problem)
    return LungRegion(prior_mask(image.shape), "prior")
