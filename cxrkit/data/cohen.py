"""The COVID-19 image data collection (Cohen et al., ``ieee8023/covid-chestxray-dataset``).

``metadata.csv`` lists one image per row with ``patientid``, ``finding``,
``view``, ``modality``, ``folder`` and ``filename``. Only X-ray rows are used,
filtered by view (default PA, AP and AP Supine). ``finding`` is read in both
schemas: the 2020 flat values (``COVID-19``, ``COVID-19, ARDS``,
``Streptococcus``, ``No Finding``, ``todo``) and the later hierarchical ones
(``Pneumonia/Viral/COVID-19``, ``Pneumonia/Bacterial/Streptococcus``).

Rows labelled ``todo``, rows of other modalities or views, and rows whose image
file is missing are left out and reported in ``DatasetSpec.excluded``.

Patients have several images; ``patient_id`` keeps them in one split. A few
image files are listed under two patient ids; those ids are merged into one
group (the smallest id) so the shared file cannot end up in both splits.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable

from cxrkit.data.adapter import (
    DatasetAdapter,
    DatasetSpec,
    FileIndex,
    as_bool,
    as_list,
    given_csv,
    make_item,
    natural_key,
    read_csv_rows,
)
from cxrkit.data.errors import DatasetError
from cxrkit.data.groups import DisjointSets

__all__ = ["CohenDataset", "finding_category", "DEFAULT_VIEWS"]

logger = logging.getLogger(__name__)

DEFAULT_VIEWS = ("PA", "AP", "AP Supine")
_COLUMNS = ("patientid", "finding", "view", "modality", "filename")

TASK_CLASSES: dict[str, list[str]] = {
    "covid_vs_rest": ["COVID-19", "Other"],
    "covid_vs_normal": ["COVID-19", "No Finding"],
    "three_class": ["COVID-19", "Other pneumonia", "No Finding"],
}

_PNEUMONIA_WORDS = {
    "pneumonia", "viral", "bacterial", "fungal", "lipoid", "aspiration",
    "sars", "mers", "mers-cov", "influenza", "h1n1", "varicella", "herpes",
    "streptococcus", "klebsiella", "legionella", "mycoplasma", "mycoplasma bacterial pneumonia",
    "e.coli", "chlamydophila", "staphylococcus", "mrsa", "nocardia", "pneumocystis",
    "aspergillosis", "candida", "cryptococcus", "histoplasmosis",
}
_UNLABELLED = {"", "todo", "unknown"}


def finding_category(finding: str) -> str:
    """Map a ``finding`` value of either schema to a category.

    Returns:
        ``covid``, ``pneumonia`` (any other pneumonia), ``no_finding``,
        ``todo`` (not labelled yet) or ``other`` (e.g. ``ARDS`` alone, ``Tuberculosis``).
    """
    tokens = [t.strip().lower() for t in re.split(r"[/,;]", finding) if t.strip()]
    if all(t in _UNLABELLED for t in tokens):
        return "todo"
    if any(re.sub(r"[^a-z0-9]", "", t) in {"covid19", "covid", "sarscov2"} for t in tokens):
        return "covid"
    if "no finding" in tokens:
        return "no_finding"
    if any(t in _PNEUMONIA_WORDS for t in tokens):
        return "pneumonia"
    return "other"


def _label(category: str, task: str) -> int | None:
    if task == "covid_vs_rest":
        return {"covid": 0, "pneumonia": 1, "no_finding": 1, "other": 1}.get(category)
    if task == "covid_vs_normal":
        return {"covid": 0, "no_finding": 1}.get(category)
    return {"covid": 0, "pneumonia": 1, "no_finding": 2}.get(category)


def _norm_view(view: str) -> str:
    return re.sub(r"\s+", " ", view.strip()).lower()


def merged_patients(rows: Iterable[dict[str, str]]) -> dict[str, str]:
    """Patient id -> group id (the smallest id), merging ids that share an image file."""
    sets = DisjointSets(order=natural_key)
    first_owner: dict[str, str] = {}
    for row in rows:
        pid = row["patientid"]
        if not pid:
            continue
        sets.union(first_owner.setdefault(row["filename"], pid), pid)
    return sets.representatives()


def find_metadata_csv(root: Path, csv: str | None) -> Path:
    """``metadata.csv`` in ``root`` (or ``csv`` if given, or one folder below)."""
    given = given_csv(root, csv, "cohen: the metadata CSV")
    if given is not None:
        return given
    for pattern in ("metadata.csv", "*/metadata.csv"):
        hits = sorted(root.glob(pattern))
        if hits:
            return hits[0]
    raise DatasetError(
        f"cohen: metadata.csv not found in {root} or one folder below. Point the root at the "
        "covid-chestxray-dataset folder (it holds metadata.csv and images/) or pass csv=PATH."
    )


class CohenDataset(DatasetAdapter):
    """Cohen et al. COVID-19 image data collection: metadata.csv plus images/."""

    name = "cohen"
    description = (
        "COVID-19 image data collection (Cohen et al.), X-ray rows, view filter, patient ids; "
        "tasks covid_vs_rest, covid_vs_normal, three_class"
    )
    tasks = {
        "covid_vs_rest": "COVID-19 vs every other labelled X-ray (other pneumonia, No Finding, ARDS, ...)",
        "covid_vs_normal": "COVID-19 vs No Finding",
        "three_class": "COVID-19 / Other pneumonia (viral, bacterial, fungal, ...) / No Finding",
    }
    default_task = "covid_vs_rest"
    option_help = {
        "views": f"X-ray views to keep, e.g. PA,AP,AP Supine,L (default {','.join(DEFAULT_VIEWS)})",
        "allow_missing": "leave out rows whose image file is missing (default true; false makes it an error)",
        "csv": "path of metadata.csv if it is not in the root",
    }

    def _load(
        self,
        root: Path,
        task: str,
        views: Any = DEFAULT_VIEWS,
        allow_missing: Any = True,
        csv: str | None = None,
    ) -> DatasetSpec:
        allow_missing = as_bool(allow_missing, "allow_missing")
        wanted = {_norm_view(v) for v in as_list(views) or []}
        if not wanted:
            raise DatasetError("cohen: views must name at least one view (PA, AP, AP Supine, L)")
        csv_path = find_metadata_csv(root, csv)
        base = csv_path.parent
        rows = read_csv_rows(csv_path, _COLUMNS, "Cohen metadata")
        groups = merged_patients(rows)
        index = FileIndex([base / "images", base / "volumes", base])
        classes = TASK_CLASSES[task]

        items: list[dict] = []
        excluded: dict[str, list[str]] = {}
        seen: dict[str, int] = {}
        missing: list[str] = []
        for row in rows:
            name = row["filename"]
            modality = row["modality"]
            if re.sub(r"[^a-z]", "", modality.lower()) != "xray":
                excluded.setdefault(f"not an X-ray (modality {modality or 'missing'})", []).append(name)
                continue
            view = _norm_view(row["view"])
            if view not in wanted:
                reason = f"view {row['view']} not selected" if row["view"] else "no view recorded"
                excluded.setdefault(reason, []).append(name)
                continue
            category = finding_category(row["finding"])
            if category == "todo":
                excluded.setdefault("finding not labelled yet (todo)", []).append(name)
                continue
            label = _label(category, task)
            if label is None:
                excluded.setdefault(f"finding not used by task {task}", []).append(name)
                continue
            folder = row.get("folder") or "images"
            path = base / folder / name
            if not path.is_file():
                path = index.find(name)
            if path is None:
                missing.append(name)
                continue
            key = str(path)
            if key in seen:
                first = items[seen[key]]
                if first["label"] != label:
                    raise DatasetError(
                        f"cohen: {csv_path} lists {name} twice with different findings "
                        f"({first['label_name']} and {classes[label]}); fix the CSV"
                    )
                excluded.setdefault("listed twice in metadata.csv", []).append(name)
                continue
            seen[key] = len(items)
            patient = groups.get(row["patientid"]) if row["patientid"] else None
            items.append(make_item(path, label, classes, patient))

        if missing and not allow_missing:
            raise DatasetError(
                f"cohen: {len(missing)} selected rows of {csv_path} have no image file under {base} "
                f"(first: {', '.join(missing[:5])}). Download them, or allow_missing=True to leave them out."
            )
        if missing:
            excluded["image file missing"] = missing
            logger.info("cohen: left out %d rows whose image file is missing", len(missing))
        return DatasetSpec(
            name=self.name,
            task=task,
            classes=list(classes),
            items=items,
            excluded=excluded,
            root=str(base),
            options={"views": sorted(as_list(views) or []), "allow_missing": allow_missing},
        )
