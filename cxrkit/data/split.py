"""Seeded, stratified, patient-grouped train/validation splits with a leakage audit and a manifest.

* Hold-out (default 80/20 as in Hossain et al. 2022): ``StratifiedShuffleSplit``
  when no patient has two images; with patients, ``StratifiedGroupKFold`` with
  ``round(1 / val_fraction)`` folds, taking one fold (exactly stratified and
  grouped when ``1 / val_fraction`` is a whole number, e.g. 0.2, 0.25, 0.1),
  else ``GroupShuffleSplit`` (grouped, not stratified).
* ``folds=k``: ``StratifiedGroupKFold`` (``StratifiedKFold`` without patients);
  ``fold`` picks the validation fold.
* ``use_predefined=True``: the collection's own ``split`` key (``test`` -> validation).

Items without a patient id are their own group. Every split is audited
(:func:`audit_leakage`): patients in both parts, and byte-identical files across
parts (compared by size first, hashed only when sizes collide). The manifest
written by :meth:`Split.save` lists image paths relative to the dataset root
with their labels and sizes, and never patient ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cxrkit.data.adapter import DatasetSpec
from cxrkit.data.errors import DatasetError

__all__ = ["Split", "LeakageReport", "make_split", "load_split", "audit_leakage", "MANIFEST_FORMAT"]

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = "cxrkit-split/1"


@dataclass
class LeakageReport:
    """What the validation part shares with the training part.

    Attributes:
        patient_overlap: patient ids with images in both parts (kept in memory only;
            manifests and summaries give counts, never ids).
        duplicate_images: ``(train file, validation file)`` pairs with identical bytes.
        overlap_images: validation images belonging to an overlapping patient.
    """

    patient_overlap: list[str] = field(default_factory=list)
    duplicate_images: list[tuple[str, str]] = field(default_factory=list)
    overlap_images: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` when nothing leaks."""
        return not self.patient_overlap and not self.duplicate_images

    def summary(self) -> str:
        """One line for logs and the CLI (no patient ids)."""
        if self.ok:
            return "leakage audit: OK (no patient in both splits, no identical image file in both splits)"
        parts = []
        if self.patient_overlap:
            parts.append(
                f"{len(self.patient_overlap)} patient(s) in both splits "
                f"({len(self.overlap_images)} validation images)"
            )
        if self.duplicate_images:
            parts.append(f"{len(self.duplicate_images)} byte-identical image(s) in both splits")
        return "leakage audit: LEAK: " + "; ".join(parts)

    def to_dict(self, root: str | None = None) -> dict:
        """JSON-ready form with paths relative to ``root``; patient ids are left out."""
        rel = (lambda p: _relpath(p, root)) if root else str
        return {
            "ok": self.ok,
            "patients_in_both": len(self.patient_overlap),
            "val_images_of_shared_patients": [rel(p) for p in self.overlap_images],
            "duplicate_images": [[rel(a), rel(b)] for a, b in self.duplicate_images],
        }


@dataclass
class Split:
    """A train / validation split of a dataset.

    Attributes:
        train: training items.
        val: validation items.
        manifest: everything needed to reproduce the split (see :meth:`save`).
        audit: the leakage audit of this split.
    """

    train: list[dict]
    val: list[dict]
    manifest: dict
    audit: "LeakageReport"

    def save(self, path: str | os.PathLike) -> Path:
        """Write the manifest as JSON (parent folders are created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.manifest, indent=1, default=str) + "\n")
        return path


def _relpath(path: str, root: str | None) -> str:
    if not root:
        return Path(path).as_posix()
    return Path(os.path.relpath(path, root)).as_posix()


def _file_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def audit_leakage(train: Sequence[dict], val: Sequence[dict]) -> LeakageReport:
    """Find patients and byte-identical image files present in both parts.

    Files are compared by size first; only files whose size occurs in both parts
    are hashed, so the audit costs one ``stat`` per file on real collections.

    Args:
        train: training items.
        val: validation items.

    Returns:
        The :class:`LeakageReport`.
    """
    train_patients = {i.get("patient_id") for i in train} - {None, ""}
    shared = sorted(train_patients & ({i.get("patient_id") for i in val} - {None, ""}))
    shared_set = set(shared)
    overlap_images = [i["image"] for i in val if i.get("patient_id") in shared_set]

    def sizes(items: Sequence[dict]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for item in items:
            try:
                out[os.stat(item["image"]).st_size].append(str(item["image"]))
            except OSError:
                logger.debug("leakage audit: cannot stat %s", item["image"])
        return out

    train_sizes, val_sizes = sizes(train), sizes(val)
    hashes: dict[str, str] = {}

    def digest(path: str) -> str:
        if path not in hashes:
            hashes[path] = _file_hash(path)
        return hashes[path]

    duplicates: list[tuple[str, str]] = []
    for size in sorted(set(train_sizes) & set(val_sizes)):
        by_hash: dict[str, list[str]] = defaultdict(list)
        for path in train_sizes[size]:
            by_hash[digest(path)].append(path)
        for path in val_sizes[size]:
            for other in by_hash.get(digest(path), [])[:1]:
                duplicates.append((other, path))
    report = LeakageReport(shared, duplicates, overlap_images)
    (logger.info if report.ok else logger.warning)("%s", report.summary())
    return report


def _groups(items: Sequence[dict]) -> tuple[np.ndarray, bool]:
    """Group label per item (patient, or the item itself) and whether any patient has 2+ images."""
    groups = [i.get("patient_id") or f"\0item{n}" for n, i in enumerate(items)]
    counts = Counter(groups)
    return np.asarray(groups, dtype=object), any(c > 1 for c in counts.values())


def _check_classes(labels: np.ndarray, need: int, what: str) -> None:
    counts = Counter(labels.tolist())
    small = {k: v for k, v in counts.items() if v < need}
    if small:
        raise DatasetError(
            f"cannot make a stratified {what}: class(es) {sorted(small)} have only "
            f"{', '.join(str(v) for v in small.values())} image(s), at least {need} needed. "
            "Use fewer folds, a larger dataset, or another task."
        )


def _indices(
    items: Sequence[dict], val_fraction: float, seed: int, folds: int | None, fold: int, use_predefined: bool
) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.model_selection import (
        GroupShuffleSplit,
        StratifiedGroupKFold,
        StratifiedKFold,
        StratifiedShuffleSplit,
    )

    n = len(items)
    if use_predefined:
        splits = [str(i.get("split", "")).lower() for i in items]
        unknown = sorted({s for s in splits if s not in {"train", "test", "val"}})
        if unknown:
            raise DatasetError(
                f"use_predefined needs a 'split' of train or test on every item; found {unknown or ['(none)']}. "
                "This dataset defines no split of its own: leave use_predefined off."
            )
        idx = np.arange(n)
        is_val = np.array([s != "train" for s in splits])
        return idx[~is_val], idx[is_val], "predefined split column"
    labels = np.asarray([int(i["label"]) for i in items])
    groups, grouped = _groups(items)
    x = np.zeros(n)
    if folds is not None:
        if not (isinstance(folds, int) and folds >= 2):
            raise DatasetError(f"folds must be an integer >= 2, got {folds!r}")
        if not 0 <= fold < folds:
            raise DatasetError(f"fold must be in 0..{folds - 1}, got {fold}")
        if len(set(groups)) < folds:
            raise DatasetError(f"{folds} folds need at least {folds} patients/images, got {len(set(groups))}")
        if grouped:
            splitter, name = StratifiedGroupKFold(folds, shuffle=True, random_state=seed), "StratifiedGroupKFold"
        else:
            _check_classes(labels, folds, f"{folds}-fold split")
            splitter, name = StratifiedKFold(folds, shuffle=True, random_state=seed), "StratifiedKFold"
        parts = splitter.split(x, labels, groups) if grouped else splitter.split(x, labels)
        train, val = list(parts)[fold]
        return train, val, f"{name}(n_splits={folds}, shuffle, seed {seed}) fold {fold}"
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if not grouped:
        _check_classes(labels, 2, "hold-out split")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
        train, val = next(splitter.split(x, labels))
        return train, val, f"StratifiedShuffleSplit(test_size={val_fraction}, seed {seed})"
    k = round(1.0 / val_fraction)
    if k >= 2 and abs(1.0 / k - val_fraction) < 1e-9 and len(set(groups)) >= k:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        train, val = next(iter(splitter.split(x, labels, groups)))
        return train, val, f"StratifiedGroupKFold(n_splits={k}, shuffle, seed {seed}) fold 0"
    splitter = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(splitter.split(x, labels, groups))
    logger.warning("val_fraction %s is not 1/k: the patient-grouped split is not stratified", val_fraction)
    return train, val, f"GroupShuffleSplit(test_size={val_fraction}, seed {seed})"


def _describe(spec_or_items: DatasetSpec | Sequence[dict]) -> tuple[list[dict], dict]:
    if isinstance(spec_or_items, DatasetSpec):
        spec = spec_or_items
        info = {
            "dataset": spec.name, "task": spec.task, "root": spec.root, "classes": list(spec.classes),
            "dataset_options": dict(spec.options), "excluded": spec.excluded_counts(),
        }
        return list(spec.items), info
    items = list(spec_or_items)
    if not items:
        raise DatasetError("cannot split an empty datalist")
    names = {int(i["label"]): i.get("label_name", str(i["label"])) for i in items}
    classes = [names.get(k, str(k)) for k in range(max(names) + 1)]
    root = os.path.commonpath([os.path.dirname(os.path.abspath(i["image"])) for i in items])
    return items, {"dataset": None, "task": None, "root": root, "classes": classes, "dataset_options": {}}


def _entries(items: Sequence[dict], root: str) -> list[dict]:
    out = []
    for item in items:
        try:
            size = os.stat(item["image"]).st_size
        except OSError:
            size = None
        out.append({"image": _relpath(item["image"], root), "label": int(item["label"]), "size": size})
    return out


def _counts(items: Sequence[dict], classes: Sequence[str]) -> dict[str, int]:
    counts = Counter(int(i["label"]) for i in items)
    return {name: counts.get(k, 0) for k, name in enumerate(classes)}


def make_split(
    spec_or_items: DatasetSpec | Sequence[dict],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
    use_predefined: bool = False,
) -> Split:
    """Split a dataset into training and validation parts, reproducibly and without patient leakage.

    Args:
        spec_or_items: a :class:`DatasetSpec` or a datalist.
        val_fraction: share of the validation part for a hold-out split (ignored with
            ``folds`` or ``use_predefined``).
        seed: random seed; the same seed gives the same split.
        folds: k for k-fold cross-validation (``None`` for a hold-out split).
        fold: which of the k folds is the validation part.
        use_predefined: use the items' own ``split`` key (``train`` / ``test``).

    Returns:
        The :class:`Split`, audited for leakage.

    Raises:
        DatasetError: bad arguments, classes too small to stratify, or no predefined split.
    """
    items, info = _describe(spec_or_items)
    if not items:
        raise DatasetError(f"{info['dataset'] or 'dataset'}: no items to split")
    if folds is not None and use_predefined:
        raise DatasetError("choose folds or use_predefined, not both")
    train_idx, val_idx, strategy = _indices(items, float(val_fraction), int(seed), folds, int(fold), use_predefined)
    train = [items[i] for i in sorted(train_idx)]
    val = [items[i] for i in sorted(val_idx)]
    if not train or not val:
        raise DatasetError(f"the split left the {'training' if not train else 'validation'} part empty")
    classes = info["classes"]
    for part, name in ((train, "training"), (val, "validation")):
        absent = [c for c, n in _counts(part, classes).items() if n == 0]
        if absent:
            logger.warning("the %s part has no image of class(es) %s", name, ", ".join(absent))
    audit = audit_leakage(train, val)
    root = info["root"]
    manifest = {
        "format": MANIFEST_FORMAT,
        **info,
        "seed": int(seed),
        "val_fraction": None if (folds or use_predefined) else float(val_fraction),
        "folds": folds,
        "fold": int(fold) if folds else None,
        "use_predefined": bool(use_predefined),
        "strategy": strategy,
        "counts": {"train": _counts(train, classes), "val": _counts(val, classes)},
        "leakage_audit": audit.to_dict(root),
        "train": _entries(train, root),
        "val": _entries(val, root),
    }
    logger.info("split (%s): %d train, %d validation images", strategy, len(train), len(val))
    return Split(train, val, manifest, audit)


def load_split(manifest_path: str | os.PathLike, spec: DatasetSpec) -> Split:
    """Rebuild a saved split exactly, with the items of ``spec`` (possibly at a new root).

    Args:
        manifest_path: JSON written by :meth:`Split.save`.
        spec: the dataset, loaded with the same adapter and task.

    Returns:
        The :class:`Split`, in the manifest's order, re-audited.

    Raises:
        DatasetError: unreadable manifest, other classes, changed labels, or files
            listed in the manifest that are missing now (all named).
    """
    path = Path(manifest_path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the split manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path} is not a cxrkit split manifest (format {MANIFEST_FORMAT} expected)")
    if list(manifest["classes"]) != list(spec.classes):
        raise DatasetError(
            f"the split manifest {path} has classes {manifest['classes']}, the dataset {spec.classes}; "
            "load the dataset with the same task"
        )
    root = spec.root or manifest["root"]
    by_rel = {_relpath(i["image"], root): i for i in spec.items}
    missing: list[str] = []
    changed: list[str] = []
    parts: dict[str, list[dict]] = {}
    for part in ("train", "val"):
        parts[part] = []
        for entry in manifest[part]:
            rel, label = entry["image"], int(entry["label"])
            item = by_rel.get(rel)
            if item is None:
                full = Path(root) / rel
                if not full.is_file():
                    missing.append(rel)
                    continue
                item = {"image": str(full), "label": label, "label_name": spec.classes[label], "patient_id": None}
            elif int(item["label"]) != label:
                changed.append(f"{rel} ({manifest['classes'][label]} -> {item['label_name']})")
                continue
            size = entry.get("size")
            if size is not None and os.path.getsize(item["image"]) != size:
                logger.warning("split manifest: %s has changed size since the split was made", rel)
            parts[part].append(item)
    if missing:
        raise DatasetError(
            f"{len(missing)} file(s) listed in the split manifest {path} are missing under {root}: "
            f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}. Restore them, or make a new split."
        )
    if changed:
        raise DatasetError(f"labels differ from the split manifest {path}: {', '.join(changed[:10])}")
    audit = audit_leakage(parts["train"], parts["val"])
    return Split(parts["train"], parts["val"], manifest, audit)
