"""Data preparation for a run: dataset adapter, optional subset, image check, split or saved manifest.

:func:`prepare_data` turns ``--dataset``/``--dataset_dir``/``--task`` into the
training, validation and held-out test lists a MONAI ``Dataset`` takes, plus
everything the run record says about them (counts, skipped images, leakage and
near-duplicate audit). :func:`prepare_evaluation_data` labels a dataset with a
trained model's class indices for evaluation (a split part of the run's own
dataset, or another collection through a class map). Both are called from the
bundle configs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cxrkit.data.split import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from cxrkit.options import flag, integer, number, optional

__all__ = ["PreparedData", "prepare_data", "prepare_evaluation_data", "parse_class_map"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Train and validation lists ready for MONAI datasets, and what the run record says about them.

    Attributes:
        dataset: dataset adapter name.
        task: task name (``None``: the adapter's default).
        root: dataset root folder (absolute).
        classes: class names by label index.
        train: training items ``{"image", "label", "index"}``.
        val: validation items, same keys.
        split: the split object (``save(path)`` writes ``split.json``).
        skipped: unreadable images left out: ``{"image": relative path, "reason"}``.
        excluded_count: items the adapter excluded (unlabelled, wrong view...).
        test: held-out test items, same keys (empty: no test part).
        class_map: dataset class -> model class used to label an evaluation (empty: same names).
    """

    dataset: str
    task: str | None
    root: str
    classes: list[str]
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    split: Any = None
    skipped: list[dict[str, str]] = field(default_factory=list)
    excluded_count: int = 0
    test: list[dict[str, Any]] = field(default_factory=list)
    class_map: dict[str, str] = field(default_factory=dict)

    @property
    def train_class_counts(self) -> list[int]:
        """Training items per class index (for loss weights)."""
        return [sum(1 for it in self.train if it["label"] == k) for k in range(len(self.classes))]

    def counts(self) -> dict[str, dict[str, int]]:
        """Items per class name, per split part (``test`` only when there is a test part)."""
        parts = (("train", self.train), ("val", self.val)) + ((("test", self.test),) if self.test else ())
        return {
            name: {c: sum(1 for it in items if it["label"] == k) for k, c in enumerate(self.classes)}
            for name, items in parts
        }

    def leakage_summary(self) -> dict[str, Any]:
        """The split's leakage audit, as plain data."""
        audit = getattr(self.split, "audit", None)
        if audit is None:
            return {}
        if hasattr(audit, "to_dict"):
            try:
                return audit.to_dict(root=self.root)
            except TypeError:
                return audit.to_dict()
        if dataclasses.is_dataclass(audit):
            return dataclasses.asdict(audit)
        return dict(audit) if isinstance(audit, Mapping) else {"audit": str(audit)}


def _subset(items: list[Any], max_items: int, seed: int) -> list[Any]:
    """At most ``max_items`` items, every class kept in proportion (round-robin over shuffled classes)."""
    by_class: dict[int, list[Any]] = {}
    for item in items:
        by_class.setdefault(int(_get(item, "label")), []).append(item)
    rng = random.Random(seed)
    for members in by_class.values():
        rng.shuffle(members)
    chosen: list[Any] = []
    queues = [by_class[k] for k in sorted(by_class)]
    while len(chosen) < max_items and any(queues):
        for queue in queues:
            if queue and len(chosen) < max_items:
                chosen.append(queue.pop())
    keep = {id(it) for it in chosen}
    return [it for it in items if id(it) in keep]


def _get(item: Any, key: str) -> Any:
    return item[key] if isinstance(item, Mapping) else getattr(item, key)


def _with_items(spec: Any, items: list[Any]) -> Any:
    if dataclasses.is_dataclass(spec) and not isinstance(spec, type):
        return dataclasses.replace(spec, items=items)
    clone = copy.copy(spec)
    clone.items = items
    return clone


def _to_monai(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"image": str(_get(it, "image")), "label": int(_get(it, "label")), "index": i} for i, it in enumerate(items)]


def _check(items: list[Any], skip_bad: bool, progress: bool, root: str) -> tuple[list[Any], list[dict[str, str]]]:
    from cxrkit.data.check import check_images

    result = check_images(items, skip_bad=bool(skip_bad), progress=bool(progress))
    skipped = []
    for bad in result.bad:
        image = _get(bad, "image") if isinstance(bad, Mapping) or hasattr(bad, "image") else bad[0]
        reason = _get(bad, "reason") if isinstance(bad, Mapping) or hasattr(bad, "reason") else bad[-1]
        if isinstance(image, Mapping):
            image = image["image"]
        try:
            image = Path(str(image)).resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            image = str(image)
        skipped.append({"image": image, "reason": str(reason)})
    return list(result.good), skipped


def prepare_data(
    dataset: str,
    root: Any,
    task: Any = None,
    *,
    run_paths: Any = None,
    val_fraction: float = 0.2,
    split_manifest: Any = None,
    seed: int = 0,
    max_items: Any = None,
    skip_bad_images: bool = False,
    progress: bool = True,
    options: Mapping[str, Any] | None = None,
    folds: Any = None,
    fold: Any = 0,
    test_fraction: Any = None,
    near_duplicates: Any = True,
) -> PreparedData:
    """Load a dataset, optionally subset it, check its images and split it (or reuse a split).

    Args:
        dataset: adapter name (``radiography``, ``coronahack``, ``cohen``, ``folder``, ``csv``).
        root: the dataset folder (``--dataset_dir``).
        task: adapter task; ``None`` for its default.
        run_paths: the run folder; when resuming, its ``split.json`` is reused.
        val_fraction: validation share for a new split.
        split_manifest: a ``split.json`` to reuse instead of splitting.
        seed: split and subset seed.
        max_items: use at most this many images (class-stratified, seeded); for quick runs.
        skip_bad_images: leave unreadable images out (listed in the summary) instead of failing.
        progress: show a progress bar while checking images.
        options: extra keyword arguments for the dataset adapter.
        folds: k for a k-fold cross-validation split (``None``: a hold-out split of ``val_fraction``).
        fold: which of the ``folds`` folds is the validation part (0-based); recorded in ``split.json``.
        test_fraction: share held out as the test part of a new split (``None``: 0.2; 0: none).
        near_duplicates: hash every image (perceptual hash) so near-duplicate copies stay in one
            part of a new split and are audited across parts and classes.

    Raises:
        ValueError: no ``--dataset_dir``, or bad option values.
        cxrkit.data errors: the dataset cannot be read or split (messages name the file).
    """
    from cxrkit.data import load_dataset
    from cxrkit.data.split import load_split, make_split

    root = optional(root)
    if root is None:
        raise ValueError("no dataset given: pass --dataset_dir DIR (and --dataset NAME if it is not 'radiography')")
    root_path = Path(str(root)).expanduser().resolve()
    if not root_path.is_dir():
        raise ValueError(f"--dataset_dir {root}: no such folder")
    task = optional(task)
    seed = int(seed)
    limit = integer(max_items, "max_items", minimum=2, allow_none=True)
    n_folds = integer(folds, "folds", minimum=2, allow_none=True)
    fold_index = integer(fold, "fold", minimum=0, allow_none=True) or 0
    if n_folds is not None and fold_index >= n_folds:
        raise ValueError(f"--fold must be between 0 and {n_folds - 1} for --folds {n_folds}, got {fold_index}")
    spec = load_dataset(str(dataset), str(root_path), task=task, **dict(options or {}))
    items = list(spec.items)
    if limit is not None and limit < len(items):
        items = _subset(items, limit, seed)
        logger.info("using %d of %d images (--max_items)", len(items), len(spec.items))
    good, skipped = _check(items, flag(skip_bad_images, "skip_bad_images"), flag(progress, "progress"), str(root_path))
    spec = _with_items(spec, good)
    manifest = optional(split_manifest)
    resumed = run_paths is not None and getattr(run_paths, "resuming", False) and run_paths.split.is_file()
    if resumed:
        manifest = run_paths.split
    test_share = DEFAULT_TEST_FRACTION if optional(test_fraction) is None else number(
        test_fraction, "test_fraction", minimum=0.0, maximum=0.95)
    hashes = None
    if flag(near_duplicates, "near_duplicates"):
        from cxrkit.data.neardup import hash_images

        hashes = hash_images([it["image"] for it in spec.items], progress=flag(progress, "progress"))
    if manifest is not None:
        split = load_split(str(manifest), spec, hashes=hashes)
    elif n_folds is not None:
        split = make_split(spec, seed=seed, folds=n_folds, fold=fold_index, test_fraction=test_share, hashes=hashes)
    else:
        val_share = number(DEFAULT_VAL_FRACTION if optional(val_fraction) is None else val_fraction, "val_fraction",
                           minimum=0.01, maximum=0.95)
        split = make_split(spec, val_fraction=val_share, seed=seed, test_fraction=test_share, hashes=hashes)
    excluded = getattr(spec, "excluded", None) or {}
    data = PreparedData(
        dataset=str(dataset),
        task=task if task is not None else getattr(spec, "task", None),
        root=str(root_path),
        classes=[str(c) for c in spec.classes],
        train=_to_monai(split.train),
        val=_to_monai(split.val),
        split=split,
        skipped=skipped,
        excluded_count=sum(len(v) for v in excluded.values()) if isinstance(excluded, Mapping) else len(excluded),
        test=_to_monai(getattr(split, "test", []) or []),
    )
    if not data.train or not data.val:
        raise ValueError(
            f"the split of {root_path} has {len(data.train)} training and {len(data.val)} validation images; "
            "both need at least one (more images, or another --val_fraction)"
        )
    logger.info("data: %s", data.counts())
    return data


def parse_class_map(value: Any) -> dict[str, str]:
    """``"COVID-19=COVID,No Finding=Normal"`` (or a mapping) -> ``{"COVID-19": "COVID", "No Finding": "Normal"}``.

    Raises:
        ValueError: an entry that is not ``DATASET_CLASS=MODEL_CLASS``.
    """
    value = optional(value)
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in value.items()}
    entries = [e for e in (value if isinstance(value, (list, tuple)) else str(value).split(",")) if str(e).strip()]
    out: dict[str, str] = {}
    for entry in entries:
        source, eq, target = str(entry).partition("=")
        if not eq or not source.strip() or not target.strip():
            raise ValueError(f"--class_map entry {str(entry).strip()!r} is not DATASET_CLASS=MODEL_CLASS; e.g. "
                             "--class_map 'COVID-19=COVID,No Finding=Normal'")
        out[source.strip()] = target.strip()
    return out


def _remap(classes: Sequence[str], model_classes: Sequence[str], class_map: Mapping[str, str]) -> dict[int, int]:
    """Dataset label index -> model output index (dataset classes left out are absent)."""
    if not class_map:
        unknown = [c for c in classes if c not in model_classes]
        if unknown:
            raise ValueError(
                f"the dataset's classes {unknown} are not among the model's {list(model_classes)}; pick a --task "
                "whose classes the model was trained on, or map them: --class_map 'DATASET_CLASS=MODEL_CLASS,...'")
        return {k: list(model_classes).index(c) for k, c in enumerate(classes)}
    lowered = {c.lower(): c for c in classes}
    remap = {}
    for source, target in class_map.items():
        name = source if source in classes else lowered.get(source.lower())
        if name is None:
            raise ValueError(f"--class_map: {source!r} is not a class of the dataset (its classes: "
                             f"{', '.join(classes)}); choose another --task or fix the name")
        if target not in model_classes:
            raise ValueError(f"--class_map: {target!r} is not a class of the model (its classes: "
                             f"{', '.join(model_classes)})")
        remap[list(classes).index(name)] = list(model_classes).index(target)
    return remap


def prepare_evaluation_data(
    dataset: str,
    root: Any,
    model_classes: Sequence[str],
    task: Any = None,
    *,
    subset: str = "all",
    split_manifest: Any = None,
    max_items: Any = None,
    skip_bad_images: bool = False,
    progress: bool = True,
    seed: int = 0,
    class_map: Any = None,
    options: Mapping[str, Any] | None = None,
) -> PreparedData:
    """Items of a dataset labelled with the MODEL's class indices, for evaluating a trained model.

    Args:
        dataset: adapter name.
        root: dataset folder.
        model_classes: the classes the model predicts, by output index.
        task: adapter task.
        subset: ``all`` images, or ``val`` / ``train`` / ``test`` of ``split_manifest``.
        split_manifest: the run's ``split.json`` (needed for ``val``/``train``/``test``).
        max_items: evaluate at most this many images (stratified).
        skip_bad_images: leave unreadable images out instead of failing.
        progress: progress bar while checking images.
        seed: subset seed.
        class_map: dataset class -> model class (``"COVID-19=COVID,No Finding=Normal"``); dataset
            classes not in the map are left out. Default: the dataset's classes must be the model's.
        options: extra keyword arguments for the dataset adapter (``allow_missing``, ``views``...).

    Raises:
        ValueError: a dataset class the model does not know, a bad ``class_map`` or ``subset``.
    """
    from cxrkit.data import load_dataset
    from cxrkit.data.split import load_split

    root = optional(root)
    if root is None:
        raise ValueError("no dataset given: pass --dataset_dir DIR")
    root_path = Path(str(root)).expanduser().resolve()
    if not root_path.is_dir():
        raise ValueError(f"--dataset_dir {root}: no such folder")
    spec = load_dataset(str(dataset), str(root_path), task=optional(task), **dict(options or {}))
    classes = [str(c) for c in spec.classes]
    model_classes = [str(c) for c in model_classes]
    mapping = parse_class_map(class_map)
    remap = _remap(classes, model_classes, mapping)
    if subset not in ("all", "val", "train", "test"):
        raise ValueError(f"--subset must be all, val, train or test, got {subset!r}")
    items = list(spec.items)
    if subset != "all":
        manifest = optional(split_manifest)
        if manifest is None or not Path(str(manifest)).is_file():
            raise ValueError(f"--subset {subset} needs the run's split.json (--split_manifest FILE); none at {manifest}")
        items = list(getattr(load_split(str(manifest), spec), subset))
        if not items:
            raise ValueError(f"the split {manifest} has no {subset} part (made with --test_fraction 0?)")
    left_out = sum(1 for it in items if int(it["label"]) not in remap)
    items = [it for it in items if int(it["label"]) in remap]
    if left_out:
        logger.info("left out %d image(s) of dataset classes not in --class_map", left_out)
    limit = integer(max_items, "max_items", minimum=1, allow_none=True)
    if limit is not None and limit < len(items):
        items = _subset(items, limit, int(seed))
    good, skipped = _check(items, flag(skip_bad_images, "skip_bad_images"), flag(progress, "progress"), str(root_path))
    evaluated = _to_monai(good)
    for item in evaluated:
        item["label"] = remap[item["label"]]
    if not evaluated:
        raise ValueError(f"no image to evaluate in {root_path}")
    return PreparedData(str(dataset), optional(task), str(root_path), model_classes, [], evaluated,
                        skipped=skipped, excluded_count=left_out, class_map=dict(mapping))
