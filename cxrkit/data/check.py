"""Up-front checks that every image of a datalist can be read, before hours of training.

Checks are cheap: PNG chunks and their CRCs are verified without inflating the
pixels (``PIL.Image.verify``), JPEGs are decoded at 1/8 scale (the DCT
shortcut still reads every byte of the entropy-coded data, so truncation is
caught), DICOM headers are parsed and the pixel-data length is compared with
rows x columns x bits (compressed DICOM is decoded), NIfTI headers are read and
the data size checked. A bad file is reported with the problem in words; the
caller either stops with one error listing them all or leaves them out and
reports them (``skip_bad=True``).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

import nibabel as nib
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from cxrkit.console import bar_disable
from cxrkit.data.errors import BadImageError, BadImagesError, decoding
from cxrkit.data.readers import FORMAT_NAMES, dicom_to_array, pil_to_grey, read_dicom_dataset, sniff_format

__all__ = ["BadImageError", "CheckResult", "check_image", "check_images"]

logger = logging.getLogger(__name__)

_UNCOMPRESSED = {
    "1.2.840.10008.1.2",  # implicit VR little endian
    "1.2.840.10008.1.2.1",  # explicit VR little endian
    "1.2.840.10008.1.2.1.99",  # deflated explicit VR little endian (inflated on read)
    "1.2.840.10008.1.2.2",  # explicit VR big endian
}


@dataclass
class CheckResult:
    """Outcome of :func:`check_images`.

    Attributes:
        good: the items whose image can be read, in input order.
        bad: ``(path, reason)`` for each unreadable image.
    """

    good: list[dict] = field(default_factory=list)
    bad: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when no image is bad."""
        return not self.bad

    def summary(self) -> str:
        """One line, e.g. ``"98 images readable, 2 unreadable (left out)"``."""
        if not self.bad:
            return f"{len(self.good)} images readable"
        return f"{len(self.good)} images readable, {len(self.bad)} unreadable (left out)"


def _check_pil(path: str) -> None:
    with Image.open(path) as img:
        if img.width < 2 or img.height < 2:
            raise BadImageError(path, f"image of size {img.width}x{img.height} is too small")
        fmt = img.format
        if fmt == "PNG":
            img.verify()  # every chunk's CRC, up to IEND; no inflating
            return
        if fmt == "JPEG":
            img.draft("L", (max(1, img.width // 8), max(1, img.height // 8)))
        img.load()
        pil_to_grey(img)  # the mode is one the reader converts


def _check_dicom(path: str) -> None:
    ds = read_dicom_dataset(path)
    if "PixelData" not in ds:
        raise BadImageError(path, "no Pixel Data (7FE0,0010) element: not a DICOM image, or an unreadable file")
    missing = [k for k in ("Rows", "Columns", "BitsAllocated") if k not in ds]
    if missing:
        raise BadImageError(path, f"DICOM header lacks {', '.join(missing)}")
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if syntax in _UNCOMPRESSED:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected = (expected + 7) // 8 if bits == 1 else expected * bits // 8
        got = len(ds.PixelData)
        if got < expected:
            raise BadImageError(path, f"truncated DICOM: {got} bytes of pixel data, {expected} expected")
        if frames > 1:
            raise BadImageError(path, f"{frames} frames; cxrkit reads single-frame radiographs")
        return
    dicom_to_array(ds)  # compressed: decode (this also tells if a decoder is installed)


def _check_nifti(path: str) -> None:
    img = nib.load(path)
    shape = tuple(d for d in img.shape if d != 1)
    if len(shape) != 2:
        raise BadImageError(path, f"NIfTI image of shape {img.shape}; cxrkit reads 2D radiographs only")
    if path.lower().endswith(".nii"):
        offset = int(img.header.get_data_offset())
        need = offset + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
        size = os.path.getsize(path)
        if size < need:
            raise BadImageError(path, f"truncated NIfTI: {size} bytes, {need} expected")
    else:
        np.asanyarray(img.dataobj)  # compressed: a 2D image inflates quickly


_CHECKS = {"pil": _check_pil, "dicom": _check_dicom, "nifti": _check_nifti}


def check_image(path: str | os.PathLike) -> None:
    """Check that one image file can be read, cheaply.

    Args:
        path: the file.

    Raises:
        BadImageError: the file is missing, empty, truncated, corrupt or not an image.
    """
    path = str(path)
    kind = sniff_format(path)
    with decoding(path, f"corrupt or truncated {FORMAT_NAMES[kind]} file"):
        _CHECKS[kind](path)


def _reason(path: str) -> str | None:
    try:
        check_image(path)
    except BadImageError as exc:
        return exc.reason
    return None


def check_images(
    items: Iterable[dict | str | os.PathLike],
    *,
    skip_bad: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> CheckResult:
    """Check every image of a datalist before training.

    Args:
        items: datalist items (dicts with ``"image"``) or plain paths.
        skip_bad: leave unreadable images out (logged and returned in ``bad``)
            instead of raising.
        progress: show a tqdm progress bar.
        workers: threads reading files in parallel (default: ``min(8, 2 x CPUs)``).

    Returns:
        :class:`CheckResult` with the good items (input order) and ``(path, reason)`` per bad file.

    Raises:
        BadImagesError: some images are unreadable and ``skip_bad`` is false; the
            message gives their count and the first ten with reasons.
    """
    items = list(items)
    paths = [str(i["image"]) if isinstance(i, dict) else str(i) for i in items]
    unique = list(dict.fromkeys(paths))
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    bar = tqdm(total=len(unique), desc="checking images", unit="img", disable=bar_disable(progress), leave=False)
    reasons: dict[str, str | None] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for path, reason in zip(unique, pool.map(_reason, unique), strict=True):
            reasons[path] = reason
            bar.update(1)
    bar.close()
    result = CheckResult()
    for item, path in zip(items, paths, strict=True):
        if reasons[path] is None:
            result.good.append(item)
    result.bad = [(p, r) for p, r in reasons.items() if r is not None]
    if result.bad and not skip_bad:
        raise BadImagesError(result.bad, total=len(unique))
    if result.bad:
        shown = "; ".join(f"{p}: {r}" for p, r in result.bad[:5])
        logger.warning(
            "left out %d of %d images that cannot be read (%s%s)",
            len(result.bad), len(unique), shown, "; ..." if len(result.bad) > 5 else "",
        )
    return result
