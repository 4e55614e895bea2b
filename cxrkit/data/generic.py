"""Generic adapters: ``folder`` (one sub-folder per class) and ``csv`` (a table of paths and labels)."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from cxrkit.data.adapter import (
    DatasetAdapter,
    DatasetSpec,
    as_bool,
    as_list,
    given_csv,
    is_image_name,
    make_item,
    natural_key,
    read_csv_rows,
)
from cxrkit.data.classnames import check_class_names, class_name_problem
from cxrkit.data.errors import DatasetError

__all__ = ["FolderDataset", "CsvDataset"]

logger = logging.getLogger(__name__)

_SKIP_DIRS = {"masks", "mask"}
_TRAIN = {"train", "training"}
_TEST = {"test", "testing", "val", "valid", "validation"}


def _patient_regex(pattern: str | None) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DatasetError(f"patient_regex {pattern!r} is not a valid regular expression: {exc}") from exc
    if regex.groups < 1:
        raise DatasetError(f"patient_regex {pattern!r} needs a group, e.g. '^(person\\d+)_'")
    return regex


def _patient(regex: re.Pattern | None, name: str) -> str | None:
    if regex is None:
        return None
    match = regex.search(name)
    return match.group(1) if match else None


def _walk_images(folder: Path, recursive: bool) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d.lower() not in _SKIP_DIRS]
        out += [Path(dirpath) / f for f in filenames if is_image_name(f)]
        if not recursive:
            break
    return sorted(out, key=lambda p: natural_key(str(p.relative_to(folder))))


class FolderDataset(DatasetAdapter):
    """Any dataset laid out as one sub-folder of images per class."""

    name = "folder"
    description = "any folder with one sub-folder of images per class (ImageFolder layout)"
    tasks = {"default": "one class per sub-folder (all of them, or those named by classes=)"}
    default_task = "default"
    option_help = {
        "classes": "class folders to use, in label order (default: every sub-folder, sorted)",
        "patient_regex": "regular expression whose first group extracts the patient from a file name",
        "recursive": "also read images in sub-folders of a class folder, except masks/ (default true)",
    }

    def _load(
        self, root: Path, task: str, classes: Any = None, patient_regex: str | None = None, recursive: Any = True
    ) -> DatasetSpec:
        if not root.is_dir():
            raise DatasetError(f"folder: {root} is not a folder")
        regex = _patient_regex(patient_regex)
        subdirs = {p.name: p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
        names = as_list(classes) or sorted(subdirs, key=natural_key)
        check_class_names(names, f"folder: a class folder of {root}" if classes is None else "folder: classes=")
        if not names:
            raise DatasetError(f"folder: {root} has no sub-folders; put each class's images in its own folder")
        missing = [c for c in names if c not in subdirs]
        if missing:
            raise DatasetError(
                f"folder: class folder(s) {', '.join(missing)} not found in {root}; "
                f"found: {', '.join(sorted(subdirs, key=natural_key)) or 'none'}"
            )
        items = []
        for label, cls in enumerate(names):
            images = _walk_images(subdirs[cls], as_bool(recursive, "recursive"))
            if not images:
                raise DatasetError(f"folder: the class folder {subdirs[cls]} holds no images")
            items += [make_item(p, label, names, _patient(regex, p.name)) for p in images]
        return DatasetSpec(
            name=self.name, task=task, classes=list(names), items=items, root=str(root),
            options={"classes": list(names), "patient_regex": patient_regex},
        )


class CsvDataset(DatasetAdapter):
    """Any dataset described by a CSV with an image path column and a label column."""

    name = "csv"
    description = "a CSV of image paths and labels (optional patient and split columns)"
    tasks = {"default": "one class per distinct value of the label column (or those named by classes=)"}
    default_task = "default"
    option_help = {
        "csv": "the CSV file, relative to the root (default: the root itself if it is a file, "
        "else the only .csv in it)",
        "path_column": "column with image paths (default image)",
        "label_column": "column with class names (default label)",
        "patient_column": "column with patient ids (default none)",
        "split_column": "column with train/test (or val) per row (default none)",
        "image_root": "folder image paths are relative to (default: the CSV's folder)",
        "classes": "classes in label order; rows with other labels are left out (default: all, sorted)",
        "allow_missing": "leave out rows whose image file is missing instead of failing (default false)",
    }

    def _find_csv(self, root: Path, csv: str | None) -> Path:
        given = given_csv(root, csv, "csv:")
        if given is not None:
            return given
        found = sorted(root.glob("*.csv"))
        if len(found) != 1:
            listing = ", ".join(p.name for p in found) or "none"
            raise DatasetError(f"csv: pass csv=FILE; {root} holds {len(found)} CSV files ({listing})")
        return found[0]

    def _load(
        self,
        root: Path,
        task: str,
        csv: str | None = None,
        path_column: str = "image",
        label_column: str = "label",
        patient_column: str | None = None,
        split_column: str | None = None,
        image_root: str | None = None,
        classes: Any = None,
        allow_missing: Any = False,
    ) -> DatasetSpec:
        csv_path = self._find_csv(root, csv)
        required = [c for c in (path_column, label_column, patient_column, split_column) if c]
        rows = read_csv_rows(csv_path, required, "dataset")
        base = Path(image_root).expanduser() if image_root else csv_path.parent
        if not base.is_absolute():
            base = (csv_path.parent / base).resolve()
        labels = sorted({r[label_column] for r in rows if r[label_column]}, key=natural_key)
        names = as_list(classes) or labels
        unknown = [c for c in names if c not in labels]
        if unknown:
            raise DatasetError(
                f"csv: class(es) {', '.join(unknown)} do not occur in column {label_column} of {csv_path}; "
                f"its values are: {', '.join(labels[:20])}"
            )
        if classes is None:  # the names are the column's values: say which row holds a bad one
            for n, row in enumerate(rows, start=2):
                if row[label_column] and class_name_problem(row[label_column]):
                    check_class_names([row[label_column]], f"csv: row {n}, column {label_column} of {csv_path}")
        check_class_names(names, "csv: classes=")
        lookup = {c: i for i, c in enumerate(names)}
        items, missing = [], []
        excluded: dict[str, list[str]] = {}
        for n, row in enumerate(rows, start=2):
            rel = row[path_column]
            if not rel:
                excluded.setdefault("empty image path", []).append(f"row {n}")
                continue
            if row[label_column] not in lookup:
                reason = "no label" if not row[label_column] else f"label {row[label_column]} not in classes"
                excluded.setdefault(reason, []).append(rel)
                continue
            path = Path(rel).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.is_file():
                missing.append(rel)
                continue
            split = None
            if split_column:
                value = row[split_column].lower()
                if value not in _TRAIN | _TEST:
                    raise DatasetError(
                        f"csv: row {n} of {csv_path} has {split_column}={row[split_column]!r}; "
                        "use train, or test/val"
                    )
                split = "train" if value in _TRAIN else "test"
            patient = row[patient_column] if patient_column else None
            items.append(make_item(path, lookup[row[label_column]], names, patient, split))
        if missing and not as_bool(allow_missing, "allow_missing"):
            raise DatasetError(
                f"csv: {len(missing)} rows of {csv_path} name image files that do not exist under {base} "
                f"(first: {', '.join(missing[:5])}). Fix the paths, set image_root=, or pass "
                "allow_missing=True "
                "(--allow_missing; for training: --dataset_options '{allow_missing: true}') to leave them out."
            )
        if missing:
            excluded["image file missing"] = missing
        return DatasetSpec(
            name=self.name, task=task, classes=list(names), items=items, excluded=excluded, root=str(base),
            options={
                "csv": str(csv_path), "path_column": path_column, "label_column": label_column,
                "patient_column": patient_column, "split_column": split_column, "classes": list(names),
            },
        )
