"""Near-duplicate radiographs by perceptual hash: resized, re-encoded or re-saved copies of one image.

Byte-identical files are the easy case (:mod:`cxrkit.data.leakage` compares
bytes). Public collections also hold the same radiograph twice as different
files: resized (299 px and 224 px copies), re-encoded (PNG and JPEG), or with
another bit depth. Those copies have different bytes but nearly the same
picture, so :func:`phash` reduces each image to a 256-bit DCT perceptual hash:

1. the image is read as grey (:func:`cxrkit.data.readers.load_image`, any format),
   reduced to at most 256 x 256 and its intensities rank-normalised (histogram
   equalised), so a copy with another contrast or window keeps its hash;
2. it is resized to 64 x 64 (area averaging, so JPEG blocking and resizing
   artefacts are averaged away);
3. the 2D DCT-II is taken and the 16 x 16 lowest frequencies are kept;
4. each bit says whether a coefficient lies above the median of the 255
   coefficients other than the constant (DC) one.

Two images are near-duplicates when their hashes differ in at most
:data:`DEFAULT_THRESHOLD` of the 256 bits. The threshold was set on real chest
radiographs (``docs/trust.md``): a 299 px PNG and its 224 px JPEG copy differ in
a handful of bits (0-12), while distinct radiographs of the COVID-19 Radiography
Database, which all share the same anatomy, differ in 40 or more.

Pairs are found with one matrix product per block of hashes (Hamming distance
of +/-1 vectors: ``(256 - a.b) / 2``), so 20,000 images take seconds.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from cxrkit.console import bar_disable

__all__ = [
    "HASH_BITS",
    "DEFAULT_THRESHOLD",
    "NearDuplicate",
    "phash",
    "phash_array",
    "hash_images",
    "hamming",
    "find_near_duplicates",
    "clusters",
]

logger = logging.getLogger(__name__)

#: side of the low-frequency DCT block kept; the hash has ``HASH_SIDE ** 2`` bits.
HASH_SIDE = 16
#: bits per hash.
HASH_BITS = HASH_SIDE * HASH_SIDE
#: side of the image the DCT is taken of.
_RESIZED = 64
#: at most this many differing bits (of 256) make two images near-duplicates.
DEFAULT_THRESHOLD = 24
_BLOCK = 2048


def _equalise(grey: np.ndarray) -> np.ndarray:
    """Rank-normalise intensities to ``[0, 1]`` (histogram equalisation without bins)."""
    flat = grey.reshape(-1)
    ranks = np.empty(flat.size, dtype=np.float64)
    order = np.argsort(flat, kind="stable")
    ranks[order] = np.arange(flat.size, dtype=np.float64)
    # equal values share their mean rank, so flat areas stay flat
    values, inverse = np.unique(flat, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks, minlength=values.size)
    counts = np.bincount(inverse, minlength=values.size)
    return ((sums / counts)[inverse] / max(flat.size - 1, 1)).reshape(grey.shape)


def phash_array(grey: np.ndarray) -> np.ndarray:
    """The perceptual hash of a grey image array.

    Args:
        grey: ``(rows, columns)`` array (any numeric range).

    Returns:
        ``(256,)`` boolean array.

    Raises:
        ValueError: not a 2D image of at least 2 x 2 pixels, or a uniform image (nothing to hash: every
            blank image would look like every other).
    """
    from PIL import Image
    from scipy.fft import dctn

    grey = np.asarray(grey, dtype=np.float64)
    if grey.ndim != 2 or min(grey.shape) < 2:
        raise ValueError(f"phash needs a 2D grey image, got shape {grey.shape}")
    image = Image.fromarray(grey.astype(np.float32), mode="F")
    if max(image.size) > 4 * _RESIZED:  # equalise at a moderate size: as robust, much cheaper
        image = image.resize((4 * _RESIZED, 4 * _RESIZED), Image.Resampling.BOX)
    image = Image.fromarray(_equalise(np.asarray(image, dtype=np.float64)).astype(np.float32), mode="F")
    small = np.asarray(image.resize((_RESIZED, _RESIZED), Image.Resampling.BOX), dtype=np.float64)
    if np.ptp(small) < 1e-6:
        raise ValueError("the image is uniform: it has no structure to hash")
    coeffs = dctn(small, type=2, norm="ortho")[:HASH_SIDE, :HASH_SIDE].reshape(-1)
    return coeffs > np.median(coeffs[1:])


def phash(path: str | os.PathLike) -> np.ndarray:
    """The perceptual hash of an image file (PNG, JPEG, DICOM, NIfTI...).

    Raises:
        cxrkit.data.errors.BadImageError: the file cannot be read.
    """
    from cxrkit.data.readers import load_image

    return phash_array(load_image(path))


def hash_images(paths: Iterable[str | os.PathLike], *, progress: bool = True,
                workers: int | None = None) -> dict[str, np.ndarray]:
    """Hash many files in parallel threads (image decoding releases the GIL).

    Args:
        paths: image files.
        progress: show a tqdm progress bar.
        workers: threads (default ``min(8, 2 x CPUs)``).

    Returns:
        path -> hash, for every file that could be read and has structure (unreadable and uniform
        files are logged and left out: the byte-identity check still covers them).
    """
    from tqdm.auto import tqdm

    from cxrkit.data.errors import BadImageError

    unique = list(dict.fromkeys(str(p) for p in paths))

    def one(path: str) -> np.ndarray | None:
        try:
            return phash(path)
        except (BadImageError, ValueError, OSError) as exc:
            logger.warning("near-duplicate audit: cannot hash %s: %s", path, exc)
            return None

    out: dict[str, np.ndarray] = {}
    workers = workers or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        bar = tqdm(total=len(unique), desc="hashing images", unit="img", disable=bar_disable(progress and unique),
                   leave=False)
        for path, value in zip(unique, pool.map(one, unique)):
            if value is not None:
                out[path] = value
            bar.update(1)
        bar.close()
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing bits of two hashes."""
    return int(np.count_nonzero(np.asarray(a, bool) != np.asarray(b, bool)))


@dataclass(frozen=True)
class NearDuplicate:
    """Two files whose hashes differ in at most the threshold.

    Attributes:
        a: the first file.
        b: the second file.
        distance: differing bits (0 .. 256).
    """

    a: str
    b: str
    distance: int


def find_near_duplicates(hashes: Mapping[str, np.ndarray], threshold: int = DEFAULT_THRESHOLD,
                         pairs_of: Sequence[tuple[Sequence[str], Sequence[str]]] | None = None) -> list[NearDuplicate]:
    """Every pair of files whose hashes differ in at most ``threshold`` bits.

    Args:
        hashes: path -> hash (from :func:`hash_images`).
        threshold: largest Hamming distance that still counts (0 .. 256).
        pairs_of: compare only these groups against each other, as ``(left, right)``
            path lists (e.g. training vs test files); default every file with every other.

    Returns:
        Pairs sorted by distance, then names; each unordered pair once.

    Raises:
        ValueError: a threshold outside 0 .. 256.
    """
    if not 0 <= int(threshold) <= HASH_BITS:
        raise ValueError(f"near-duplicate threshold must be between 0 and {HASH_BITS} bits, got {threshold}")
    if pairs_of is None:
        names = list(hashes)
        pairs_of = [(names, names)]
    found: dict[tuple[str, str], int] = {}
    for left, right in pairs_of:
        left = [p for p in left if p in hashes]
        right = [p for p in right if p in hashes]
        if not left or not right:
            continue
        signs_r = np.stack([hashes[p] for p in right]).astype(np.float32) * 2 - 1
        for start in range(0, len(left), _BLOCK):
            block = left[start:start + _BLOCK]
            signs_l = np.stack([hashes[p] for p in block]).astype(np.float32) * 2 - 1
            dist = np.rint((HASH_BITS - signs_l @ signs_r.T) / 2).astype(np.int32)
            for i, j in zip(*np.nonzero(dist <= int(threshold))):
                a, b = block[i], right[j]
                if a == b:
                    continue
                key = (a, b) if a < b else (b, a)
                found[key] = int(dist[i, j])
    return [NearDuplicate(a, b, d) for (a, b), d in sorted(found.items(), key=lambda kv: (kv[1], kv[0]))]


def clusters(pairs: Iterable[NearDuplicate]) -> dict[str, str]:
    """Connected groups of near-duplicates: file -> a representative file of its group.

    Files in no pair are not in the result; a group's representative is its first file by name.
    """
    from cxrkit.data.groups import DisjointSets

    sets = DisjointSets()
    for pair in pairs:
        sets.union(pair.a, pair.b)
    return sets.representatives()
