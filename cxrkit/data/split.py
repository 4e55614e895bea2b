"""Seeded, stratified, patient-grouped train / validation / test splits with a leakage audit and a manifest.

* Test part (default 20%, :data:`DEFAULT_TEST_FRACTION`): held out FIRST, with the
  same stratified, patient-grouped hold-out as below; it is never used to choose
  a model, so the numbers measured on it are honest. ``test_fraction=0`` gives the
  study's two-part 80/20 split (reports then say the headline comes from the
  split that chose the model). A dataset too small for three parts (a class with
  fewer than 3 images, too few patients) falls back to two parts with a warning
  recorded in the manifest (``test_note``).
* Hold-out of the rest: ``StratifiedShuffleSplit`` when no patient has two
  images; with patients, ``StratifiedGroupKFold`` with ``round(1 / share)`` folds,
  taking one fold (exactly stratified and grouped when ``1 / share`` is a whole
  number: 0.2 test then 0.2 validation = a quarter of the rest), else
  ``GroupShuffleSplit`` (grouped, not stratified). Shares are of the whole
  dataset: 0.2 / 0.2 gives 60 / 20 / 20.
* ``folds=k``: after the test part, ``StratifiedGroupKFold`` (``StratifiedKFold``
  without patients) over the rest; ``fold`` picks the validation fold. Every
  fold shares the one test part.
* ``use_predefined=True``: the collection's own ``split`` key: ``test`` rows are
  the test part and validation is held out of the ``train`` rows (with
  ``test_fraction=0``: ``test`` rows are the validation part, as before).

Items without a patient id are their own group; near-duplicate files (when
perceptual hashes are given) join one group, so copies of a radiograph never
straddle two parts. Every split is audited (:func:`cxrkit.data.leakage.audit_leakage`).
The manifest written by :meth:`Split.save` lists image paths relative to the
dataset root with their labels and sizes, and never patient ids.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from cxrkit.data.adapter import DatasetSpec
from cxrkit.data.errors import DatasetError
from cxrkit.data.leakage import LeakageReport, audit_leakage
from cxrkit.data.manifest import MANIFEST_FORMAT, PARTS, read_manifest
from cxrkit.data.split_strategy import three_way

__all__ = ["Split", "LeakageReport", "make_split", "load_split", "audit_leakage", "MANIFEST_FORMAT",
           "DEFAULT_TEST_FRACTION", "DEFAULT_VAL_FRACTION", "PARTS"]

logger = logging.getLogger(__name__)

#: share of the dataset held out as the test part by default.
DEFAULT_TEST_FRACTION = 0.2
#: share of the dataset used for validation (model selection) by default.
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class Split:
    """A train / validation / test split of a dataset.

    Attributes:
        train: training items.
        val: validation items (they choose the best epoch).
        manifest: everything needed to reproduce the split (see :meth:`save`).
        audit: the leakage audit of this split.
        test: held-out test items (empty for a two-part split).
    """

    train: list[dict]
    val: list[dict]
    manifest: dict
    audit: LeakageReport
    test: list[dict] = field(default_factory=list)

    def part(self, name: str) -> list[dict]:
        """The items of ``train``, ``val`` or ``test``."""
        if name not in PARTS:
            raise ValueError(f"a split has the parts {', '.join(PARTS)}, not {name!r}")
        return getattr(self, name)

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


def _common_root(items: Sequence[dict]) -> str:
    """The deepest folder holding every item (the manifest's entries are relative to it)."""
    return os.path.commonpath([os.path.dirname(os.path.abspath(i["image"])) for i in items])


def _spec_root(spec: DatasetSpec) -> str:
    """The folder the manifest's entries are relative to: the adapter's root when it holds every image, else the
    deepest folder holding them all (an adapter that set no root; a CSV naming images elsewhere by absolute path),
    so that no entry steps out of it."""
    if not spec.items:
        return spec.root
    if spec.root:
        base = os.path.abspath(spec.root)
        if all(os.path.commonpath([base, os.path.abspath(i["image"])]) == base for i in spec.items):
            return spec.root
    return _common_root(spec.items)


def _describe(spec_or_items: DatasetSpec | Sequence[dict]) -> tuple[list[dict], dict]:
    if isinstance(spec_or_items, DatasetSpec):
        spec = spec_or_items
        root = _spec_root(spec)
        info = {
            "dataset": spec.name, "task": spec.task, "root": root, "classes": list(spec.classes),
            "dataset_options": dict(spec.options), "excluded": spec.excluded_counts(),
        }
        return list(spec.items), info
    items = list(spec_or_items)
    if not items:
        raise DatasetError("cannot split an empty datalist")
    names = {int(i["label"]): i.get("label_name", str(i["label"])) for i in items}
    classes = [names.get(k, str(k)) for k in range(max(names) + 1)]
    root = _common_root(items)
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
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
    folds: int | None = None,
    fold: int = 0,
    use_predefined: bool = False,
    hashes: Mapping[str, np.ndarray] | None = None,
    near_duplicate_threshold: int | None = None,
) -> Split:
    """Split a dataset into training, validation and test parts, reproducibly and without leakage.

    Args:
        spec_or_items: a :class:`DatasetSpec` or a datalist.
        val_fraction: share of the whole dataset in the validation part (ignored with
            ``folds``, and with ``use_predefined`` when the dataset has ``val`` rows).
        test_fraction: share of the whole dataset held out as the test part; 0 for a
            two-part split. With ``use_predefined`` any value above 0 means "the
            collection's test rows are the test part".
        seed: random seed; the same seed gives the same split.
        folds: k for k-fold cross-validation of what the test part leaves (``None``: hold-out).
        fold: which of the k folds is the validation part.
        use_predefined: use the items' own ``split`` key (``train`` / ``test``).
        hashes: image path -> perceptual hash (:func:`cxrkit.data.neardup.hash_images`):
            near-duplicates are kept in one part and audited; ``None``: not checked.
        near_duplicate_threshold: Hamming threshold of the near-duplicate check
            (default :data:`cxrkit.data.neardup.DEFAULT_THRESHOLD`).

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
    val_fraction, test_fraction = float(val_fraction), float(test_fraction)
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise DatasetError(f"test_fraction must be in [0, 1) and val_fraction + test_fraction below 1, got "
                           f"{test_fraction} + {val_fraction}; e.g. 0.2 and 0.2 give 60/20/20")
    clusters = None
    if hashes is not None:
        from cxrkit.data.neardup import clusters as dup_clusters, find_near_duplicates

        known = {str(i["image"]) for i in items}
        clusters = dup_clusters(find_near_duplicates({k: v for k, v in hashes.items() if k in known},
                                                     near_duplicate_threshold or _default_threshold()))
    try:
        train_idx, val_idx, test_idx, strategy, test_used, note = three_way(
            items, val_fraction, test_fraction, int(seed), folds, int(fold), use_predefined, clusters)
    except DatasetError as exc:
        if not clusters:
            raise
        raise DatasetError(
            f"{exc} Note: {len(clusters)} images are near-duplicate copies in {len(set(clusters.values()))} "
            "group(s), each kept in one part. If they are not copies of one radiograph (e.g. synthetic or "
            "uniform images), switch the check off: --near_duplicates false (data check: --no_near_duplicates)."
        ) from None
    train, val, test = ([items[i] for i in sorted(idx)] for idx in (train_idx, val_idx, test_idx))
    if not train or not val:
        raise DatasetError(f"the split left the {'training' if not train else 'validation'} part empty")
    classes = info["classes"]
    for part, name in ((train, "training"), (val, "validation"), (test, "test")):
        absent = [c for c, n in _counts(part, classes).items() if n == 0]
        if absent and part:
            logger.warning("the %s part has no image of class(es) %s", name, ", ".join(absent))
    audit = audit_leakage(train, val, test, hashes=hashes, threshold=near_duplicate_threshold)
    root = info["root"]
    manifest = {
        "format": MANIFEST_FORMAT,
        **info,
        "seed": int(seed),
        "val_fraction": None if (folds or use_predefined) else val_fraction,
        "test_fraction": None if use_predefined else test_used,
        "test_fraction_requested": test_fraction,
        "test_note": note,
        "folds": folds,
        "fold": int(fold) if folds else None,
        "use_predefined": bool(use_predefined),
        "strategy": strategy,
        "near_duplicate_groups": len(set((clusters or {}).values())),
        "counts": {"train": _counts(train, classes), "val": _counts(val, classes), "test": _counts(test, classes)},
        "leakage_audit": audit.to_dict(root),
        "train": _entries(train, root),
        "val": _entries(val, root),
        "test": _entries(test, root),
    }
    logger.info("split (%s): %d train, %d validation, %d test images", strategy, len(train), len(val), len(test))
    return Split(train, val, manifest, audit, test)


def _default_threshold() -> int:
    from cxrkit.data.neardup import DEFAULT_THRESHOLD

    return DEFAULT_THRESHOLD


def load_split(manifest_path: str | os.PathLike, spec: DatasetSpec, *,
               hashes: Mapping[str, np.ndarray] | None = None, near_duplicate_threshold: int | None = None) -> Split:
    """Rebuild a saved split exactly, with the items of ``spec`` (possibly at a new root).

    Args:
        manifest_path: JSON written by :meth:`Split.save`.
        spec: the dataset, loaded with the same adapter and task.
        hashes: perceptual hashes for the near-duplicate audit (``None``: not checked).
        near_duplicate_threshold: its Hamming threshold (default: the module's).

    Returns:
        The :class:`Split`, in the manifest's order, re-audited (a manifest
        written before test parts existed has an empty test part).

    Raises:
        DatasetError: unreadable manifest, other classes, changed labels, or files
            listed in the manifest that are missing now (all named).
    """
    path = Path(manifest_path)
    manifest = read_manifest(path, spec.classes, same_names=True, classes_of="the dataset").data
    root = _spec_root(spec) or manifest["root"]
    by_rel = {_relpath(i["image"], root): i for i in spec.items}
    missing: list[str] = []
    changed: list[str] = []
    parts: dict[str, list[dict]] = {}
    for part in PARTS:
        parts[part] = []
        for entry in manifest.get(part) or []:
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
    audit = audit_leakage(parts["train"], parts["val"], parts["test"], hashes=hashes,
                          threshold=near_duplicate_threshold)
    return Split(parts["train"], parts["val"], manifest, audit, parts["test"])
