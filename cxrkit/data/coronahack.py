"""The CoronaHack Chest X-Ray dataset (Kaggle).

Labels come from ``Chest_xray_Corona_Metadata.csv``: ``Label`` is ``Normal`` or
``Pnemonia`` (sic), ``Label_1_Virus_category`` says ``bacteria``, ``Virus`` or
``Stress-Smoking``, and ``Label_2_Virus_category`` names the agent
(``COVID-19``, ``SARS``, ``Streptococcus``, ``ARDS``). ``Dataset_type``
(``TRAIN``/``TEST``) becomes the item key ``split``.

Images live in ``Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset/{train,test}``
as published; a single ``Coronahack-Chest-XRay-Dataset/{train,test}`` or
``{train,test}`` beside the CSV is accepted too.

The CSV has no patient column. Most images come from the Kermany et al.
paediatric collection, whose file names carry the patient
(``person83_bacteria_407.jpeg`` -> ``person83``, ``IM-0128-0001.jpeg`` ->
``IM-0128``); those become ``patient_id`` so splits keep a child's images
together. Other names (the COVID-19 images) get ``patient_id=None``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from cxrkit.data.adapter import (
    DatasetAdapter,
    DatasetSpec,
    FileIndex,
    as_bool,
    make_item,
    read_csv_rows,
)
from cxrkit.data.errors import DatasetError

__all__ = ["CoronaHackDataset", "patient_from_name", "METADATA_CSV"]

logger = logging.getLogger(__name__)

METADATA_CSV = "Chest_xray_Corona_Metadata.csv"
_COLUMNS = ("X_ray_image_name", "Label", "Dataset_type", "Label_1_Virus_category", "Label_2_Virus_category")
_IMAGE_BASES = (
    "Coronahack-Chest-XRay-Dataset/Coronahack-Chest-XRay-Dataset",
    "Coronahack-Chest-XRay-Dataset",
    ".",
)
_SPLITS = {"train": "train", "test": "test"}
_PATIENT_PATTERNS = (
    re.compile(r"^(person\d+)_", re.IGNORECASE),
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE),
)

TASK_CLASSES: dict[str, list[str]] = {
    "covid_vs_rest": ["COVID-19", "Non-COVID"],
    "covid_vs_normal": ["COVID-19", "Normal"],
    "normal_vs_pneumonia": ["Normal", "Pneumonia"],
    "three_class": ["Normal", "Bacterial", "Viral"],
}


def patient_from_name(name: str) -> str | None:
    """The patient encoded in a Kermany-style file name, else ``None``."""
    for pattern in _PATIENT_PATTERNS:
        match = pattern.match(name)
        if match:
            return match.group(1)
    return None


def _category(row: dict[str, str]) -> str:
    """``normal``, ``covid``, ``viral``, ``bacterial``, ``other_pneumonia`` or ``unknown:<why>``."""
    label = row["Label"].strip().lower()
    kind = row["Label_1_Virus_category"].strip().lower()
    agent = row["Label_2_Virus_category"].strip().lower()
    if label == "normal":
        return "normal"
    if label not in {"pnemonia", "pneumonia"}:
        return f"unknown:Label '{row['Label']}'"
    if "covid" in agent:
        return "covid"
    if kind.startswith("virus") or kind == "viral":
        return "viral"
    if kind.startswith("bacteri"):
        return "bacterial"
    return "other_pneumonia"


def _label(category: str, task: str) -> int | None:
    if task == "covid_vs_rest":
        return 0 if category == "covid" else 1
    if task == "normal_vs_pneumonia":
        return 0 if category == "normal" else 1
    if task == "covid_vs_normal":
        return {"covid": 0, "normal": 1}.get(category)
    return {"normal": 0, "bacterial": 1, "viral": 2, "covid": 2}.get(category)


def find_metadata_csv(root: Path, csv: str | None) -> Path:
    """The metadata CSV: ``csv`` if given, else searched in ``root`` and two levels below."""
    if root.is_file():
        return root
    if csv:
        path = Path(csv).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise DatasetError(f"coronahack: the metadata CSV {path} does not exist")
        return path
    for pattern in (METADATA_CSV, f"*/{METADATA_CSV}", f"*/*/{METADATA_CSV}"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    raise DatasetError(
        f"coronahack: {METADATA_CSV} not found in {root} or two folders below. "
        "Download it with the images (it is part of the Kaggle dataset) or pass csv=PATH."
    )


def find_image_base(folder: Path) -> Path:
    """The folder holding ``train/`` and ``test/``, trying the published nesting first."""
    tried = []
    for rel in _IMAGE_BASES:
        base = (folder / rel).resolve()
        tried.append(str(base))
        if base.is_dir() and any(
            p.is_dir() and p.name.lower() in _SPLITS for p in base.iterdir()
        ):
            return base
    raise DatasetError(
        "coronahack: no train/ or test/ image folder found; looked in " + ", ".join(tried)
    )


class CoronaHackDataset(DatasetAdapter):
    """CoronaHack Chest X-Ray: Chest_xray_Corona_Metadata.csv plus train/ and test/ image folders."""

    name = "coronahack"
    description = (
        "CoronaHack Chest X-Ray (Kaggle) with its metadata CSV and TRAIN/TEST split; "
        "tasks covid_vs_rest, covid_vs_normal, normal_vs_pneumonia, three_class"
    )
    tasks = {
        "covid_vs_rest": "COVID-19 vs every other image (normal and other pneumonia)",
        "covid_vs_normal": "COVID-19 vs Normal (other pneumonia left out); e.g. external validation",
        "normal_vs_pneumonia": "Normal vs Pneumonia (any cause, COVID-19 included)",
        "three_class": "Normal / Bacterial / Viral pneumonia (COVID-19 counts as viral; "
        "Stress-Smoking ARDS left out)",
    }
    default_task = "covid_vs_rest"
    option_help = {
        "allow_missing": "leave out CSV rows whose image file is missing instead of failing (default false)",
        "csv": "path of Chest_xray_Corona_Metadata.csv if it is not under the root",
        "patient_from_filename": "derive patient ids from Kermany-style file names (default true)",
    }

    def _load(
        self,
        root: Path,
        task: str,
        allow_missing: Any = False,
        csv: str | None = None,
        patient_from_filename: Any = True,
    ) -> DatasetSpec:
        allow_missing = as_bool(allow_missing, "allow_missing")
        use_names = as_bool(patient_from_filename, "patient_from_filename")
        csv_path = find_metadata_csv(root, csv)
        rows = read_csv_rows(csv_path, _COLUMNS, "CoronaHack metadata")
        base = find_image_base(csv_path.parent if root.is_file() else root)
        split_dirs = {p.name.lower(): p for p in base.iterdir() if p.is_dir() and p.name.lower() in _SPLITS}
        indexes = {split: FileIndex([d]) for split, d in split_dirs.items()}
        anywhere = FileIndex(split_dirs.values())
        classes = TASK_CLASSES[task]

        items, missing, listed, misplaced = [], [], set(), 0
        excluded: dict[str, list[str]] = {}
        for row in rows:
            name = row["X_ray_image_name"]
            split = row["Dataset_type"].strip().lower()
            if split not in _SPLITS:
                excluded.setdefault(f"unknown Dataset_type '{row['Dataset_type']}'", []).append(name)
                continue
            category = _category(row)
            if category.startswith("unknown:"):
                excluded.setdefault(f"unrecognised {category[8:]}", []).append(name)
                continue
            label = _label(category, task)
            if label is None:
                excluded.setdefault(f"not used by task {task} ({category})", []).append(name)
                continue
            index = indexes.get(split)
            path = index.find(name) if index else None
            if path is None:
                path = anywhere.find(name)  # in the other split's folder: keep the CSV's split
                if path is None:
                    missing.append(name)
                    continue
                misplaced += 1
            listed.add(path.name)
            patient = patient_from_name(name) if use_names else None
            items.append(make_item(path, label, classes, patient, _SPLITS[split]))

        if misplaced:
            logger.warning(
                "coronahack: %d images are not in the folder their Dataset_type names; the CSV's split is kept",
                misplaced,
            )
        if missing and not allow_missing:
            raise DatasetError(
                f"coronahack: {len(missing)} of {len(rows)} rows of {csv_path} have no image file under "
                f"{base}/{{train,test}} (first: {', '.join(missing[:5])}). Download the missing images, "
                "or pass allow_missing=True "
                "(--allow_missing; for training: --dataset_options '{allow_missing: true}') to leave those rows out."
            )
        if missing:
            excluded["image file missing"] = missing
            logger.info("coronahack: left out %d rows whose image file is missing", len(missing))
        known = listed | {n.casefold() for n in _excluded_names(excluded)}
        unlisted = sorted(
            n for idx in indexes.values() for n in idx.names() if n not in known and n.casefold() not in known
        )
        if unlisted:
            excluded["image not listed in the metadata CSV"] = unlisted
        return DatasetSpec(
            name=self.name,
            task=task,
            classes=list(classes),
            items=items,
            excluded=excluded,
            root=str(base),
            options={"allow_missing": allow_missing, "patient_from_filename": use_names},
        )


def _excluded_names(excluded: dict[str, list[str]]) -> set[str]:
    return {n for names in excluded.values() for n in names}
