"""The dataset-adapter contract: a :class:`DatasetAdapter` turns a folder into a :class:`DatasetSpec`.

A :class:`DatasetSpec` is a MONAI datalist (a list of plain dicts) plus the
class names, the task, and what was left out and why. Every built-in adapter
(``radiography``, ``coronahack``, ``cohen``, ``folder``, ``csv``) and every
third-party one registered under the ``cxrkit.datasets`` entry-point group
subclasses :class:`DatasetAdapter`.

Items have these keys:

* ``image`` (str): absolute path of the image file;
* ``label`` (int): index into ``classes``;
* ``label_name`` (str): ``classes[label]``;
* ``patient_id`` (str or None): the patient, where the collection says (used to
  keep a patient's images in one split);
* ``split`` (optional, ``"train"`` or ``"test"``): a split the collection
  itself defines.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cxrkit import options
from cxrkit.data.errors import DatasetError
from cxrkit.data.inputs import IMAGE_SUFFIXES, is_image_name

__all__ = [
    "DatasetAdapter",
    "DatasetSpec",
    "FileIndex",
    "IMAGE_SUFFIXES",
    "is_image_name",
    "make_item",
    "natural_key",
    "read_csv_rows",
    "as_list",
    "as_bool",
]

logger = logging.getLogger(__name__)

_JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}


def is_junk_name(name: str) -> bool:
    """Hidden files and OS droppings (``.DS_Store``, ``Thumbs.db``) that never count as data."""
    return name.startswith(".") or name.lower() in _JUNK_NAMES


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``COVID-2`` before ``COVID-10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(text))]


def as_list(value: str | Iterable[str] | None) -> list[str] | None:
    """Accept ``"PA,AP"`` (from the command line) as well as ``["PA", "AP"]``."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v).strip() for v in value]


def as_bool(value: object, name: str) -> bool:
    """An adapter option's boolean (:func:`cxrkit.options.flag`).

    Raises:
        DatasetError: not a boolean spelling; the message names the option.
    """
    try:
        return options.flag(value, name)
    except ValueError:
        raise DatasetError(f"option {name}={value!r} is not a boolean; use true or false") from None


def make_item(
    path: Path | str,
    label: int,
    classes: Sequence[str],
    patient_id: str | None = None,
    split: str | None = None,
) -> dict:
    """One datalist entry with the keys every adapter produces."""
    item = {
        "image": str(path),
        "label": int(label),
        "label_name": classes[label],
        "patient_id": patient_id or None,
    }
    if split is not None:
        item["split"] = split
    return item


@dataclass
class DatasetSpec:
    """A dataset as cxrkit sees it: a datalist, class names and what was left out.

    Attributes:
        name: adapter name, e.g. ``"radiography"``.
        task: task name, e.g. ``"covid_vs_normal"``.
        classes: class names; ``label`` indexes this list.
        items: the datalist (see the module docstring for the keys).
        excluded: reason -> file names (or metadata rows) that were left out.
        root: the dataset folder the items were found under.
        options: the adapter options the spec was loaded with (recorded in split manifests).
    """

    name: str
    task: str
    classes: list[str]
    items: list[dict]
    excluded: dict[str, list[str]] = field(default_factory=dict)
    root: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from cxrkit.data.classnames import check_class_names

        # every adapter's names (third-party ones too) reach run folders only through here
        self.classes = check_class_names(self.classes, f"{self.name} dataset")
        for item in self.items:
            label = item.get("label")
            if not isinstance(label, int) or not 0 <= label < len(self.classes):
                raise DatasetError(
                    f"{self.name}: item {item.get('image')} has label {label!r}, "
                    f"not an index into the {len(self.classes)} classes {self.classes}"
                )

    def __len__(self) -> int:
        return len(self.items)

    def class_counts(self, items: Iterable[dict] | None = None) -> dict[str, int]:
        """Images per class name (in ``classes`` order), over ``items`` or all items."""
        counts = Counter(int(i["label"]) for i in (self.items if items is None else items))
        return {name: counts.get(k, 0) for k, name in enumerate(self.classes)}

    def excluded_counts(self) -> dict[str, int]:
        """How many entries were left out, per reason."""
        return {reason: len(names) for reason, names in self.excluded.items()}

    def summary(self) -> str:
        """One line: dataset, task, counts per class and what was left out."""
        counts = ", ".join(f"{name} {n}" for name, n in self.class_counts().items())
        text = f"{self.name}/{self.task}: {len(self.items)} images ({counts})"
        if self.excluded:
            left = "; ".join(f"{reason}: {n}" for reason, n in self.excluded_counts().items())
            text += f"; left out: {left}"
        return text


class FileIndex:
    """The files of some folders by name, for fast look-ups of names listed in a CSV.

    A name is looked up exactly first, then case-insensitively (collections
    published from Windows or macOS differ in case from their metadata).

    Args:
        folders: folders to index; missing ones are skipped.
        recursive: also index sub-folders.
    """

    def __init__(self, folders: Iterable[Path], recursive: bool = False) -> None:
        self._exact: dict[str, Path] = {}
        self._folded: dict[str, Path] = {}
        for folder in folders:
            self._scan(Path(folder), recursive)

    def _scan(self, folder: Path, recursive: bool) -> None:
        if not folder.is_dir():
            return
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir():
                    if recursive and not entry.name.startswith("."):
                        self._scan(Path(entry.path), recursive)
                elif not is_junk_name(entry.name):
                    self._exact.setdefault(entry.name, Path(entry.path))
                    self._folded.setdefault(entry.name.casefold(), Path(entry.path))

    def find(self, name: str) -> Path | None:
        """The file called ``name`` (exact, else case-insensitive match), or ``None``."""
        return self._exact.get(name) or self._folded.get(name.casefold())

    def names(self) -> set[str]:
        """All indexed file names."""
        return set(self._exact)

    def __len__(self) -> int:
        return len(self._exact)


def given_csv(root: Path, csv: str | None, what: str) -> Path | None:
    """The CSV a user pointed at: ``root`` itself when it is a file, else the ``csv`` option.

    Args:
        root: the dataset root given by the user.
        csv: the ``csv=`` option, absolute or relative to ``root``.
        what: how the file is named in the error, e.g. ``"cohen: the metadata CSV"``.

    Returns:
        The path, or ``None`` when neither names a file (the adapter then searches).

    Raises:
        DatasetError: ``csv`` names a file that does not exist.
    """
    if root.is_file():
        return root
    if not csv:
        return None
    path = Path(csv).expanduser()
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist")
    return path


def read_csv_rows(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts, checking that ``required`` columns exist.

    Header names are stripped of spaces and a UTF-8 byte-order mark; values are stripped.

    Args:
        path: the CSV file.
        required: column names that must be present.
        what: how to call the file in messages (e.g. ``"CoronaHack metadata"``).

    Returns:
        One dict per row.

    Raises:
        DatasetError: the file cannot be read, or a required column is missing.
    """
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            with open(path, newline="", encoding=encoding) as fh:
                first = fh.readline()
                fh.seek(0)
                delimiter = max(",;\t", key=first.count)  # from the header line only
                reader = csv.reader(fh, delimiter=delimiter)
                header = [h.strip() for h in next(reader, [])]
                rows = [
                    {h: (row[k].strip() if k < len(row) else "") for k, h in enumerate(header)}
                    for row in reader
                    if any(cell.strip() for cell in row)
                ]
            break
        except UnicodeDecodeError:
            continue
        except (OSError, csv.Error) as exc:
            raise DatasetError(f"cannot read the {what} file {path}: {exc}") from exc
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(
            f"the {what} file {path} lacks the column(s) {', '.join(missing)}; "
            f"its columns are: {', '.join(h for h in header if h) or '(none)'}. "
            "Is this the right file?"
        )
    return rows


class DatasetAdapter(ABC):
    """Turns a dataset folder into a :class:`DatasetSpec` for a named task.

    Subclasses set the class attributes and implement :meth:`_load`. The base
    class checks the folder, the task name and the option names, and logs the
    result.

    Attributes:
        name: registry name.
        description: one line for ``cxrkit list datasets``.
        tasks: task name -> description.
        default_task: the task used when none is given.
        option_help: option name -> description; other options are refused.
    """

    name: str = ""
    description: str = ""
    tasks: dict[str, str] = {}
    default_task: str = ""
    option_help: dict[str, str] = {}

    def load(self, root: str | os.PathLike, task: str | None = None, **options: Any) -> DatasetSpec:
        """Read the dataset under ``root`` for ``task``.

        Args:
            root: the folder the user downloaded (or, for ``csv``, the CSV file).
            task: one of :attr:`tasks`; defaults to :attr:`default_task`.
            **options: adapter options, see :attr:`option_help`.

        Returns:
            The :class:`DatasetSpec`.

        Raises:
            DatasetError: missing folder, unknown task or option, or a problem
                with the collection's files (the message names it).
        """
        path = Path(root).expanduser()
        if not path.exists():
            raise DatasetError(
                f"{self.name}: {path} does not exist. Pass the folder where you unpacked the dataset."
            )
        task = task or self.default_task
        if task not in self.tasks:
            raise DatasetError(
                f"{self.name}: unknown task '{task}'. Tasks: "
                + "; ".join(f"{k} ({v})" for k, v in self.tasks.items())
            )
        unknown = sorted(set(options) - set(self.option_help))
        if unknown:
            known = ", ".join(self.option_help) or "none"
            raise DatasetError(f"{self.name}: unknown option(s) {', '.join(unknown)}; options: {known}")
        spec = self._load(path.resolve(), task, **options)
        if not spec.items:
            raise DatasetError(
                f"{self.name}: no usable images for task '{task}' under {path}. "
                + (f"Left out: {spec.excluded_counts()}" if spec.excluded else "")
            )
        logger.info("%s", spec.summary())
        return spec

    @abstractmethod
    def _load(self, root: Path, task: str, **options: Any) -> DatasetSpec:
        """Build the spec; ``root`` exists and ``task`` is valid."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
