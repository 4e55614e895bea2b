"""The leakage audit of a split: what the validation and test parts share with the others.

Three kinds of leak are looked for between every two parts (train, validation, test):

* the same patient in two parts (``patient_id``);
* byte-identical image files in two parts (compared by size first, hashed
  only when sizes collide, so the check costs one ``stat`` per file);
* near-duplicate images in two parts: resized or re-encoded copies of one
  radiograph (perceptual hashes, :mod:`cxrkit.data.neardup`), when hashes are given.

Near-duplicates whose two files carry different classes are listed too (in
any parts): the same radiograph labelled twice is a label conflict. Reports
and manifests give counts and file names, never patient ids.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

__all__ = ["LeakageReport", "audit_leakage", "PART_NAMES"]

logger = logging.getLogger(__name__)

#: display names of the parts of a split.
PART_NAMES = {"train": "training", "val": "validation", "test": "test"}


def _relpath(path: str, root: str | None) -> str:
    if not root:
        return Path(path).as_posix()
    return Path(os.path.relpath(path, root)).as_posix()


@dataclass
class LeakageReport:
    """What the parts of a split share.

    Attributes:
        patient_overlap: patient ids with images in two parts (kept in memory only;
            manifests and summaries give counts, never ids).
        duplicate_images: ``(file, file)`` pairs with identical bytes in two parts.
        overlap_images: validation / test images belonging to a patient of an earlier part.
        near_duplicates: near-duplicate pairs in two parts:
            ``{"a", "b", "parts": [part, part], "distance"}``.
        near_duplicates_across_classes: near-duplicate pairs with different labels (any parts):
            ``{"a", "b", "classes": [label, label], "parts", "distance"}``.
        near_duplicate_threshold: the Hamming threshold used (``None``: near-duplicates not checked).
    """

    patient_overlap: list[str] = field(default_factory=list)
    duplicate_images: list[tuple[str, str]] = field(default_factory=list)
    overlap_images: list[str] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)
    near_duplicates_across_classes: list[dict] = field(default_factory=list)
    near_duplicate_threshold: int | None = None

    @property
    def ok(self) -> bool:
        """``True`` when nothing leaks between the parts (label conflicts are reported, not counted)."""
        return not self.patient_overlap and not self.duplicate_images and not self.near_duplicates

    def summary(self) -> str:
        """One line for logs and the CLI (no patient ids)."""
        checked = "near-duplicate" if self.near_duplicate_threshold is not None else None
        if self.ok:
            text = ("leakage audit: OK (no patient in two parts, no identical image file in two parts"
                    + (", no near-duplicate image in two parts" if checked else "") + ")")
        else:
            parts = []
            if self.patient_overlap:
                parts.append(f"{len(self.patient_overlap)} patient(s) in two parts "
                             f"({len(self.overlap_images)} validation/test images)")
            if self.duplicate_images:
                parts.append(f"{len(self.duplicate_images)} byte-identical image(s) in two parts")
            if self.near_duplicates:
                parts.append(f"{len(self.near_duplicates)} near-duplicate image pair(s) in two parts")
            text = "leakage audit: LEAK: " + "; ".join(parts)
        if self.near_duplicates_across_classes:
            text += (f"; {len(self.near_duplicates_across_classes)} near-duplicate pair(s) carry different "
                     "classes (the same radiograph labelled twice?)")
        return text

    def to_dict(self, root: str | None = None) -> dict:
        """JSON-ready form with paths relative to ``root``; patient ids are left out."""
        rel = (lambda p: _relpath(p, root)) if root else str

        def pair(d: dict) -> dict:
            return {**d, "a": rel(d["a"]), "b": rel(d["b"])}

        return {
            "ok": self.ok,
            "patients_in_both": len(self.patient_overlap),
            "val_images_of_shared_patients": [rel(p) for p in self.overlap_images],
            "duplicate_images": [[rel(a), rel(b)] for a, b in self.duplicate_images],
            "near_duplicates_checked": self.near_duplicate_threshold is not None,
            "near_duplicate_threshold": self.near_duplicate_threshold,
            "near_duplicates": [pair(d) for d in self.near_duplicates],
            "near_duplicates_across_classes": [pair(d) for d in self.near_duplicates_across_classes],
        }


def _file_hash(path: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _identical(first: Sequence[dict], second: Sequence[dict], digests: dict[str, str]) -> list[tuple[str, str]]:
    def sizes(items: Sequence[dict]) -> dict[int, list[str]]:
        out: dict[int, list[str]] = defaultdict(list)
        for item in items:
            try:
                out[os.stat(item["image"]).st_size].append(str(item["image"]))
            except OSError:
                logger.debug("leakage audit: cannot stat %s", item["image"])
        return out

    def digest(path: str) -> str:
        if path not in digests:
            digests[path] = _file_hash(path)
        return digests[path]

    a_sizes, b_sizes = sizes(first), sizes(second)
    found: list[tuple[str, str]] = []
    for size in sorted(set(a_sizes) & set(b_sizes)):
        by_hash: dict[str, list[str]] = defaultdict(list)
        for path in a_sizes[size]:
            by_hash[digest(path)].append(path)
        for path in b_sizes[size]:
            for other in by_hash.get(digest(path), [])[:1]:
                found.append((other, path))
    return found


def audit_leakage(train: Sequence[dict], val: Sequence[dict], test: Sequence[dict] | None = None, *,
                  hashes: Mapping[str, np.ndarray] | None = None, threshold: int | None = None) -> LeakageReport:
    """Find patients, byte-identical files and near-duplicate images shared by two parts of a split.

    Args:
        train: training items.
        val: validation items.
        test: test items (``None`` or empty: a two-part split).
        hashes: image path -> perceptual hash (:func:`cxrkit.data.neardup.hash_images`);
            ``None`` skips the near-duplicate checks.
        threshold: near-duplicate Hamming threshold (default :data:`cxrkit.data.neardup.DEFAULT_THRESHOLD`).

    Returns:
        The :class:`LeakageReport`.
    """
    parts = {"train": list(train), "val": list(val), "test": list(test or [])}
    names = [n for n, items in parts.items() if items]
    patients = {n: {i.get("patient_id") for i in parts[n]} - {None, ""} for n in names}
    shared: set = set()
    overlap_images: list[str] = []
    duplicates: list[tuple[str, str]] = []
    digests: dict[str, str] = {}
    for k, later in enumerate(names):
        earlier = set().union(*(patients[n] for n in names[:k])) if k else set()
        common = patients[later] & earlier
        shared |= common
        overlap_images += [i["image"] for i in parts[later] if i.get("patient_id") in common]
        for first in names[:k]:
            duplicates += _identical(parts[first], parts[later], digests)
    report = LeakageReport(sorted(shared), duplicates, overlap_images)
    if hashes is not None:
        _near_duplicates(report, parts, names, hashes, threshold)
    (logger.info if report.ok else logger.warning)("%s", report.summary())
    return report


def _near_duplicates(report: LeakageReport, parts: Mapping[str, list[dict]], names: Sequence[str],
                     hashes: Mapping[str, np.ndarray], threshold: int | None) -> None:
    from cxrkit.data.neardup import DEFAULT_THRESHOLD, find_near_duplicates

    threshold = DEFAULT_THRESHOLD if threshold is None else int(threshold)
    report.near_duplicate_threshold = threshold
    part_of = {str(i["image"]): n for n in names for i in parts[n]}
    label_of = {str(i["image"]): i.get("label_name", i.get("label")) for n in names for i in parts[n]}
    files = {n: [str(i["image"]) for i in parts[n]] for n in names}
    across_parts = [(files[a], files[b]) for k, b in enumerate(names) for a in names[:k]]
    for pair in find_near_duplicates(hashes, threshold, across_parts):
        report.near_duplicates.append({"a": pair.a, "b": pair.b, "parts": [part_of[pair.a], part_of[pair.b]],
                                       "distance": pair.distance})
    by_class: dict[str, list[str]] = defaultdict(list)
    for path, label in label_of.items():
        by_class[str(label)].append(path)
    classes = sorted(by_class)
    across_classes = [(by_class[a], by_class[b]) for k, b in enumerate(classes) for a in classes[:k]]
    for pair in find_near_duplicates(hashes, threshold, across_classes):
        report.near_duplicates_across_classes.append({
            "a": pair.a, "b": pair.b, "classes": [str(label_of[pair.a]), str(label_of[pair.b])],
            "parts": [part_of[pair.a], part_of[pair.b]], "distance": pair.distance})
