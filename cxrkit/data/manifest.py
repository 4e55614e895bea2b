"""The split manifest (``split.json``): read and checked in one place, for every reader.

A manifest is data a run folder carries from one machine or user to another, so
nothing in it is taken on trust. :func:`read_manifest` checks, before anyone
opens an image it names:

* the file is a JSON object of format :data:`MANIFEST_FORMAT`;
* ``classes`` is a list of class names, as many as the reader's classes (the same
  names, where the reader needs the labels' meaning);
* ``root`` (the dataset folder the split was made from) is a path;
* ``train``, ``val`` and ``test`` (``test`` may be absent in manifests older
  than test parts) are lists of ``{"image": PATH, "label": INDEX, "size": BYTES}``;
* every ``label`` is a class index ``0 .. n-1`` of the classes;
* every ``image`` is a path relative to the dataset folder that stays inside it:
  no absolute path, drive, ``..`` component, or NUL. The check is on the path
  itself, so it holds for the recorded root and for a relocated one
  (``--dataset_dir``) alike; links inside the dataset folder are the dataset's own;
* ``fold`` is a fold number or null.

Each problem is a :class:`ManifestError` of one line naming the file, the field
(``test[3].label``) and what is wrong.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

from cxrkit.data.errors import DatasetError

__all__ = ["MANIFEST_FORMAT", "PARTS", "ManifestError", "SplitManifest", "read_manifest", "entry_problem"]

MANIFEST_FORMAT = "cxrkit-split/1"
#: the parts of a split, in manifest order.
PARTS = ("train", "val", "test")
#: parts every manifest has (``test`` came later: absent means empty).
_REQUIRED_PARTS = ("train", "val")
_SHOWN = 120


class ManifestError(DatasetError):
    """A split manifest that cannot be used; the one-line message names the file, the field and the problem."""


def _show(value: Any) -> str:
    """``repr`` (escapes: one line whatever the value holds), its middle cut when long (a path keeps its name)."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN // 2] + "..." + text[-(_SHOWN // 2 - 3):]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def entry_problem(image: Any) -> str | None:
    """What is wrong with a manifest entry's ``image`` as a path inside the dataset folder (``None``: nothing).

    Both the POSIX and the Windows reading of the path must be relative and free of ``..``.
    """
    if not isinstance(image, str) or not image.strip():
        return "must be a non-empty path relative to the dataset folder"
    if "\x00" in image:
        return "contains a NUL character"
    posix, windows = PurePosixPath(image), PureWindowsPath(image)
    if posix.is_absolute() or windows.drive or windows.root:
        return "is an absolute path; entries must be relative to the dataset folder"
    if ".." in posix.parts or ".." in windows.parts:
        return "steps out of the dataset folder ('..'); entries must stay inside it"
    return None


@dataclass(frozen=True)
class SplitManifest:
    """A checked split manifest.

    Attributes:
        path: the manifest file.
        data: its content (checked as the module says).
        root: the folder its entries are resolved under: the relocation passed to
            :func:`read_manifest`, else the ``root`` the manifest recorded.
    """

    path: Path
    data: dict
    root: str

    @property
    def classes(self) -> list[str]:
        """The class names, by label index."""
        return list(self.data["classes"])

    @property
    def recorded_root(self) -> str:
        """The dataset folder the split was made from."""
        return str(self.data["root"])

    def entries(self, part: str) -> list[dict]:
        """The entries of ``train``, ``val`` or ``test`` (``image`` relative to :attr:`root`, ``label``, ``size``)."""
        return list(self.data.get(part) or [])

    def resolve(self, image: str) -> str:
        """An entry's file: ``image`` (checked by :func:`entry_problem`) joined to :attr:`root`."""
        return os.path.join(self.root, image)

    def items(self, part: str) -> list[tuple[str, int]]:
        """``(file, label)`` for every entry of ``part``, the files under :attr:`root`."""
        return [(self.resolve(e["image"]), int(e["label"])) for e in self.entries(part)]


def _fail(path: Path, field: str, problem: str) -> ManifestError:
    return ManifestError(f"{path}: {field}: {problem}" if field else f"{path}: {problem}")


def _check_entries(path: Path, part: str, entries: Any, n_classes: int, class_text: str, classes_of: str) -> None:
    if not isinstance(entries, list):
        raise _fail(path, part, f"must be a list of {{image, label}} entries, got {type(entries).__name__}")
    for i, entry in enumerate(entries):
        where = f"{part}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(path, where, f"must be an object with image and label, got {_show(entry)}")
        problem = entry_problem(entry.get("image"))
        if problem:
            raise _fail(path, f"{where}.image", f"{_show(entry.get('image'))} {problem}")
        label = entry.get("label")
        if not _is_int(label) or not 0 <= label < n_classes:
            raise _fail(path, f"{where}.label", f"{_show(label)} is not a class index of {classes_of} ({class_text})")
        size = entry.get("size")
        if size is not None and (not _is_int(size) or size < 0):
            raise _fail(path, f"{where}.size", f"must be a file size in bytes or null, got {_show(size)}")


def read_manifest(path: str | os.PathLike, classes: Sequence[str] | None = None,
                  dataset_dir: str | os.PathLike | None = None, *, same_names: bool = False,
                  classes_of: str = "the run") -> SplitManifest:
    """Read and check a split manifest.

    Args:
        path: the ``split.json``.
        classes: the classes its labels must index (a run's classes, or a dataset's); ``None``: its own.
        same_names: the manifest's ``classes`` must be ``classes`` (not only as many): for readers that give
            the labels their meaning (the audit, rebuilding a split).
        dataset_dir: where the dataset is now, to resolve the entries under instead of the recorded ``root``.
        classes_of: whose ``classes`` these are, for the messages (``the run``, ``the dataset``).

    Returns:
        The :class:`SplitManifest`.

    Raises:
        ManifestError: unreadable, not JSON, or any check of the module fails (one line: file, field, problem).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, "", f"not valid JSON ({exc}); the file is corrupt or truncated: restore it or re-run "
                    "the training that wrote it") from None
    except OSError as exc:
        raise _fail(path, "", f"cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        found = type(data).__name__ if not isinstance(data, dict) else _show(data.get("format"))
        raise _fail(path, "format", f"not a cxrkit split manifest ({MANIFEST_FORMAT} expected, got {found})")
    own = data.get("classes")
    if not isinstance(own, list) or len(own) < 2 or not all(isinstance(c, str) for c in own):
        raise _fail(path, "classes", f"must be a list of two or more class names, got {_show(own)}")
    if classes is not None and (own != list(classes) if same_names else len(own) != len(classes)):
        raise _fail(path, "classes", f"{_show(own)} differ from the classes of {classes_of}, {_show(list(classes))}")
    root = data.get("root")
    if not isinstance(root, str) or not root.strip() or "\x00" in root:
        raise _fail(path, "root", f"must be the dataset folder the split was made from, got {_show(root)}")
    fold = data.get("fold")
    if fold is not None and not _is_int(fold):
        raise _fail(path, "fold", f"must be a fold number or null, got {_show(fold)}")
    class_text = f"0..{len(own) - 1}: {', '.join(own)}"
    for part in PARTS:
        if part not in data or data[part] is None:
            if part in _REQUIRED_PARTS:
                raise _fail(path, part, "missing; a split manifest lists the images of each part")
            continue
        _check_entries(path, part, data[part], len(own), class_text, classes_of)
    where = str(Path(dataset_dir).expanduser()) if dataset_dir is not None else root
    return SplitManifest(path, data, where)
