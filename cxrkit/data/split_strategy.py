"""How a split assigns items to its parts: stratified, grouped hold-outs, k folds, predefined parts.

:func:`three_way` returns the indices of the training, validation and test
parts of a datalist (see :mod:`cxrkit.data.split` for the rules and the manifest).
Groups (a patient's images, near-duplicate copies of one radiograph) always
stay in one part.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from cxrkit.data.errors import DatasetError
from cxrkit.data.groups import DisjointSets

__all__ = ["three_way"]

logger = logging.getLogger(__name__)


def _groups(items: Sequence[dict], clusters: Mapping[str, str] | None = None) -> tuple[np.ndarray, bool]:
    """Group label per item and whether any group has 2+ items.

    An item's group is its patient, or the item itself; near-duplicate files
    (``clusters``: file -> representative) join one group, so copies of one
    radiograph land in the same part.
    """
    sets = DisjointSets()
    keys = []
    for n, item in enumerate(items):
        key = f"\0p{item['patient_id']}" if item.get("patient_id") else f"\0item{n}"
        keys.append(key)
        rep = (clusters or {}).get(str(item["image"]))
        if rep is not None:
            sets.union(key, f"\0dup{rep}")
    groups = [sets.find(k) for k in keys]
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


def _holdout(sub: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
             what: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Hold out ``fraction`` of the items ``sub`` (indices): ``(kept, held out, strategy)``."""
    try:
        return _sklearn_holdout(sub, labels, groups, fraction, seed, what)
    except ValueError as exc:  # scikit-learn: too few items or groups for this share
        raise DatasetError(f"cannot hold out {fraction:.3g} of {len(sub)} images as the {what} part: "
                           f"{str(exc).rstrip('.')}. "
                           "Use a larger dataset or another share.") from None


def _sklearn_holdout(sub: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
                     what: str) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold, StratifiedShuffleSplit

    y, g = labels[sub], groups[sub]
    x = np.zeros(len(sub))
    grouped = len(set(g.tolist())) < len(sub)
    if not grouped:
        _check_classes(y, 2, "hold-out split")
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        kept, held = next(splitter.split(x, y))
        return sub[kept], sub[held], f"StratifiedShuffleSplit(test_size={fraction:g}, seed {seed})"
    k = round(1.0 / fraction)
    if k >= 2 and abs(1.0 / k - fraction) < 1e-9 and len(set(g.tolist())) >= k:
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        kept, held = next(iter(splitter.split(x, y, g)))
        return sub[kept], sub[held], f"StratifiedGroupKFold(n_splits={k}, shuffle, seed {seed}) fold 0"
    splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
    kept, held = next(splitter.split(x, y, g))
    logger.warning("the %s share %.3g is not 1/k: the patient-grouped split is not stratified", what, fraction)
    return sub[kept], sub[held], f"GroupShuffleSplit(test_size={fraction:g}, seed {seed})"


def _kfold(sub: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int, fold: int,
           seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if not (isinstance(folds, int) and folds >= 2):
        raise DatasetError(f"folds must be an integer >= 2, got {folds!r}")
    if not 0 <= fold < folds:
        raise DatasetError(f"fold must be in 0..{folds - 1}, got {fold}")
    y, g = labels[sub], groups[sub]
    x = np.zeros(len(sub))
    if len(set(g.tolist())) < folds:
        raise DatasetError(f"{folds} folds need at least {folds} patients/images, got {len(set(g.tolist()))}")
    if len(set(g.tolist())) < len(sub):
        splitter, name = StratifiedGroupKFold(folds, shuffle=True, random_state=seed), "StratifiedGroupKFold"
        parts = splitter.split(x, y, g)
    else:
        _check_classes(y, folds, f"{folds}-fold split")
        splitter, name = StratifiedKFold(folds, shuffle=True, random_state=seed), "StratifiedKFold"
        parts = splitter.split(x, y)
    train, val = list(parts)[fold]
    return sub[train], sub[val], f"{name}(n_splits={folds}, shuffle, seed {seed}) fold {fold}"


def _predefined(items: Sequence[dict], labels: np.ndarray, groups: np.ndarray, val_fraction: float,
                with_test: bool, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    splits = [str(i.get("split", "")).lower() for i in items]
    unknown = sorted({s for s in splits if s not in {"train", "test", "val"}})
    if unknown:
        raise DatasetError(
            f"use_predefined needs a 'split' of train or test on every item; found {unknown or ['(none)']}. "
            "This dataset defines no split of its own: leave use_predefined off."
        )
    idx = np.arange(len(items))
    kind = np.asarray(splits)
    if not with_test:
        return idx[kind == "train"], idx[kind != "train"], idx[:0], "predefined split column"
    test, val = idx[kind == "test"], idx[kind == "val"]
    train = idx[kind == "train"]
    if len(val):
        return train, val, test, "predefined split column (train / val / test)"
    train, val, how = _holdout(train, labels, groups, val_fraction, seed, "validation")
    return train, val, test, f"predefined test part; validation {how} of the predefined training part"


def _indices(
    items: Sequence[dict], val_fraction: float, test_fraction: float, seed: int, folds: int | None, fold: int,
    use_predefined: bool, clusters: Mapping[str, str] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    labels = np.asarray([int(i["label"]) for i in items])
    groups, _ = _groups(items, clusters)
    if use_predefined:
        return _predefined(items, labels, groups, val_fraction, test_fraction > 0, seed)
    idx = np.arange(len(items))
    rest, test, how = idx, idx[:0], ""
    if test_fraction > 0:
        rest, test, how = _holdout(idx, labels, groups, test_fraction, seed, "test")
        how = f"test part: {how}; "
    if folds is not None:
        train, val, strategy = _kfold(rest, labels, groups, folds, fold, seed)
    else:
        share = val_fraction / (1.0 - test_fraction)  # of what the test part left
        train, val, strategy = _holdout(rest, labels, groups, share, seed, "validation")
    return train, val, test, how + strategy


def three_way(items: Sequence[dict], val_fraction: float, test_fraction: float, seed: int, folds: int | None,
               fold: int, use_predefined: bool, clusters: Mapping[str, str] | None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str, float, str | None]:
    """The parts' indices, falling back to two parts when the dataset is too small for a test part."""
    try:
        train, val, test, strategy = _indices(items, val_fraction, test_fraction, seed, folds, fold, use_predefined,
                                              clusters)
        if test_fraction > 0 and not use_predefined and (len(test) == 0 or len(val) == 0 or len(train) == 0):
            raise DatasetError("a part would be empty")
        return train, val, test, strategy, test_fraction, None
    except DatasetError as exc:
        if test_fraction <= 0 or use_predefined:
            raise
        note = (f"no test part: the dataset is too small for a stratified three-part split ({exc}); the split has "
                "training and validation parts only, and the validation part that chose the model also gives "
                "the headline numbers")
        logger.warning("%s", note)
    train, val, test, strategy = _indices(items, val_fraction, 0.0, seed, folds, fold, use_predefined, clusters)
    return train, val, test, strategy, 0.0, note
