"""The COVID-19 Radiography Database (Rahman, Chowdhury et al.; Kaggle).

Three published layouts are accepted, found anywhere up to three folders below
the root the user gives:

* the first release, ``COVID-19 Radiography Database/{COVID-19,NORMAL,Viral Pneumonia}/*.png``;
* the flat layout, ``COVID-19_Radiography_Dataset/{COVID,Normal,Viral Pneumonia,Lung_Opacity}/COVID-1.png``;
* the nested layout, ``COVID/images/COVID-1.png`` with ``COVID/masks/`` and
  ``COVID.metadata.xlsx`` beside it (masks and spreadsheets are ignored).

The collection has no patient identifiers, so items carry ``patient_id=None``;
the split's leakage audit still catches byte-identical images across splits.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

from cxrkit.data.adapter import (
    DatasetAdapter,
    DatasetSpec,
    as_bool,
    is_image_name,
    is_junk_name,
    make_item,
    natural_key,
)
from cxrkit.data.errors import DatasetError

__all__ = ["RadiographyDataset", "CLASS_FOLDERS", "TASK_CLASSES"]

logger = logging.getLogger(__name__)

#: class name -> accepted folder names, compared without case, spaces, '-' or '_'.
CLASS_FOLDERS: dict[str, tuple[str, ...]] = {
    "COVID": ("covid", "covid19"),
    "Lung_Opacity": ("lungopacity",),
    "Normal": ("normal",),
    "Viral Pneumonia": ("viralpneumonia",),
}

#: task -> classes, in label order.
TASK_CLASSES: dict[str, list[str]] = {
    "covid_vs_normal": ["COVID", "Normal"],
    "three_class": ["COVID", "Normal", "Viral Pneumonia"],
    "four_class": ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"],
}

_METADATA_SUFFIXES = (".xlsx", ".xls", ".csv", ".txt", ".md", ".json", ".pdf")
_MAX_DEPTH = 3


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _class_of_folder(name: str) -> str | None:
    key = _norm(name)
    for cls, aliases in CLASS_FOLDERS.items():
        if key in aliases:
            return cls
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        return sorted(subdirs, key=lambda p: natural_key(p.name))
    except OSError:
        return []


def find_dataset_folder(root: Path) -> tuple[Path, dict[str, Path]]:
    """The folder holding the class folders, searched breadth-first below ``root``.

    Returns:
        ``(folder, {class name: class folder})``.

    Raises:
        DatasetError: no class folder found, two candidate folders at the same depth,
            or two folders for one class.
    """
    level = [root]
    for _depth in range(_MAX_DEPTH + 1):
        hits: list[tuple[Path, dict[str, list[Path]]]] = []
        for folder in level:
            found: dict[str, list[Path]] = {}
            for sub in _subdirs(folder):
                cls = _class_of_folder(sub.name)
                if cls:
                    found.setdefault(cls, []).append(sub)
            if found:
                hits.append((folder, found))
        if len(hits) > 1:
            raise DatasetError(
                "radiography: several copies of the COVID-19 Radiography Database under "
                f"{root}: {', '.join(str(h[0]) for h in hits)}. Pass one of them as the root."
            )
        if hits:
            folder, found = hits[0]
            doubles = {c: ps for c, ps in found.items() if len(ps) > 1}
            if doubles:
                cls, paths = next(iter(doubles.items()))
                raise DatasetError(
                    f"radiography: {folder} has two folders for class {cls}: "
                    f"{', '.join(p.name for p in paths)}. Keep one of them."
                )
            return folder, {c: ps[0] for c, ps in found.items()}
        level = [sub for folder in level for sub in _subdirs(folder)]
    raise DatasetError(
        f"radiography: no class folder (COVID, Normal, Viral Pneumonia, Lung_Opacity) found in {root} "
        f"or up to {_MAX_DEPTH} folders below it. Point the root at the unpacked "
        "COVID-19_Radiography_Dataset folder or its parent."
    )


def list_class_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Images of one class folder (flat, or in its ``images/`` sub-folder).

    Returns:
        ``(images in natural order, names of unrecognised files)``; masks,
        spreadsheets and hidden files are neither.
    """
    images_dir = next((d for d in _subdirs(folder) if d.name.lower() == "images"), None)
    source = images_dir or folder
    images, other = [], []
    with os.scandir(source) as entries:
        for entry in entries:
            if entry.is_dir() or is_junk_name(entry.name):
                continue
            if is_image_name(entry.name):
                images.append(Path(entry.path))
            elif not entry.name.lower().endswith(_METADATA_SUFFIXES):
                other.append(entry.name)
    images.sort(key=lambda p: natural_key(p.name))
    return images, sorted(other)


class RadiographyDataset(DatasetAdapter):
    """COVID-19 Radiography Database: COVID / Normal / Viral Pneumonia / Lung_Opacity PNG folders."""

    name = "radiography"
    description = (
        "COVID-19 Radiography Database (Kaggle), flat or nested layout; "
        "tasks covid_vs_normal, three_class, four_class"
    )
    tasks = {
        "covid_vs_normal": "COVID vs an equal-size seeded random subset of Normal (Hossain et al. 2022)",
        "three_class": "COVID / Normal / Viral Pneumonia",
        "four_class": "COVID / Lung_Opacity / Normal / Viral Pneumonia (Sun 2024)",
    }
    default_task = "covid_vs_normal"
    option_help = {
        "seed": "seed of the balanced subset (default 0)",
        "balance": "down-sample every class to the smallest one "
        "(default: true for covid_vs_normal, where only Normal is sub-sampled; false otherwise)",
    }

    def _load(self, root: Path, task: str, seed: int = 0, balance: Any = None) -> DatasetSpec:
        classes = TASK_CLASSES[task]
        folder, found = find_dataset_folder(root)
        missing = [c for c in classes if c not in found]
        if missing:
            raise DatasetError(
                f"radiography task '{task}' needs the class folder(s) {', '.join(missing)} in {folder}, "
                f"which {'is' if len(missing) == 1 else 'are'} missing; found: {', '.join(sorted(found))}. "
                f"Download the full collection or choose another task ({', '.join(self.tasks)})."
            )
        excluded: dict[str, list[str]] = {}
        per_class: dict[str, list[Path]] = {}
        for cls in classes:
            images, other = list_class_images(found[cls])
            if not images:
                raise DatasetError(
                    f"radiography: the class folder {found[cls]} holds no images "
                    f"(expected PNG files, directly or in an images/ sub-folder)"
                )
            per_class[cls] = images
            if other:
                excluded.setdefault("not an image file", []).extend(other)
        nested = any((found[c] / "images").is_dir() for c in classes)
        logger.info(
            "radiography: class folders %s in %s (%s layout)",
            ", ".join(sorted(found)), folder, "nested images/" if nested else "flat",
        )
        for cls in sorted(set(found) - set(classes)):
            logger.info("radiography: class folder %s is not used by task %s", found[cls].name, task)

        balance = (task == "covid_vs_normal") if balance is None else as_bool(balance, "balance")
        if balance:
            per_class = self._balance(per_class, task, int(seed), excluded)

        items = [
            make_item(path, label, classes)
            for label, cls in enumerate(classes)
            for path in per_class[cls]
        ]
        return DatasetSpec(
            name=self.name,
            task=task,
            classes=list(classes),
            items=items,
            excluded=excluded,
            root=str(folder),
            options={"seed": int(seed), "balance": balance},
        )

    @staticmethod
    def _balance(
        per_class: dict[str, list[Path]], task: str, seed: int, excluded: dict[str, list[str]]
    ) -> dict[str, list[Path]]:
        """Seeded random down-sampling (all COVID kept for covid_vs_normal, as in the study)."""
        rng = random.Random(seed)
        if task == "covid_vs_normal":
            target = {"COVID": len(per_class["COVID"]), "Normal": len(per_class["COVID"])}
        else:
            smallest = min(len(v) for v in per_class.values())
            target = {cls: smallest for cls in per_class}
        out = {}
        for cls, images in per_class.items():
            n = target[cls]
            if len(images) < n:
                logger.warning(
                    "radiography: only %d %s images for %d COVID; the classes stay unbalanced",
                    len(images), cls, n,
                )
                n = len(images)
            keep = set(rng.sample(range(len(images)), n))
            out[cls] = [p for i, p in enumerate(images) if i in keep]
            dropped = [p.name for i, p in enumerate(images) if i not in keep]
            if dropped:
                excluded.setdefault(f"{cls} not in the balanced subset (seed {seed})", []).extend(dropped)
        return out
