"""Which files are images: the one list of image suffixes, and expanding files and folders into images to read.

Used by the dataset adapters (:func:`is_image_name`), by ``cxrkit predict`` /
MONAI Label / the review page (:func:`find_images`) and by the bundles'
inference config (:func:`list_images`, ``--input FILE_OR_DIR``), so every
entry point finds the same images in a folder: PNG, JPEG, BMP, TIFF, NIfTI and
DICOM, also DICOM files without a suffix (recognised by their content).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from cxrkit import options

__all__ = ["IMAGE_SUFFIXES", "is_image_name", "is_image_file", "image_stem", "find_images", "list_images"]

#: file-name endings read as images (lower case).
IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz",
)
_NO_IMAGES = "folder without image files (PNG, JPEG, DICOM, NIfTI)"


def is_image_name(name: str) -> bool:
    """Whether ``name`` ends like an image file cxrkit reads (case-insensitive); hidden files never are."""
    low = name.lower()
    return not low.startswith(".") and low.endswith(IMAGE_SUFFIXES)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """Whether a file found in a folder is an image: an image suffix, or a DICOM file without a suffix."""
    from cxrkit.data.readers import sniff_format_quiet

    path = Path(path)
    if is_image_name(path.name):
        return True
    return not path.name.startswith(".") and "." not in path.name and sniff_format_quiet(path) == "dicom"


def image_stem(name: str) -> str:
    """``name`` without its image suffix (``scan.nii.gz`` -> ``scan``; a suffix-less DICOM stays as it is)."""
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_images(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[str], list[tuple[str, str]]]:
    """Expand files and folders into the image files to read.

    A folder contributes every image file under it (sorted; see :func:`is_image_file`);
    other files in it are ignored. A file given by name is always tried, whatever its name.

    Args:
        inputs: files and folders.

    Returns:
        ``(files, problems)``: the files in order (each once, as given or as found under a
        given folder), and ``(input, reason)`` for each path that does not exist or folder
        without images.
    """
    files: list[str] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        key = os.path.realpath(name)
        if key not in seen:
            seen.add(key)
            files.append(name)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
            if not found:
                problems.append((str(item), _NO_IMAGES))
            for p in found:
                add(str(p))
        elif path.is_file():
            add(str(item))
        else:
            problems.append((str(item), "no such file or folder"))
    return files, problems


def list_images(path: Any) -> list[dict[str, Any]]:
    """``[{"image": file, "index": i}]`` for one image file or every image under a folder (the inference input).

    Raises:
        ValueError: no ``--input``, a missing path, or a folder without images.
    """
    given = options.optional(path)
    if given is None:
        raise ValueError("no input given: pass --input FILE_OR_DIR")
    files, problems = find_images([Path(str(given)).expanduser().resolve()])
    if problems:
        reason = problems[0][1]
        if reason == _NO_IMAGES:
            reason = f"no image files ({', '.join(IMAGE_SUFFIXES)}, or DICOM without a suffix) in this folder"
        raise ValueError(f"--input {given}: {reason}")
    return [{"image": f, "index": i} for i, f in enumerate(files)]
