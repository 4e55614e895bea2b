"""Dataset adapters (registry ``cxrkit.datasets``), image readers, transforms, checks and splits.

Typical use::

    from cxrkit.data import load_dataset, make_split, check_images, build_transforms

    spec = load_dataset("radiography", "~/data/COVID-19_Radiography_Dataset", task="covid_vs_normal")
    spec.items = check_images(spec.items, skip_bad=True).good  # unreadable files are reported, then left out
    split = make_split(spec, val_fraction=0.2, seed=0)          # patient-grouped, stratified, audited
    split.save("run/split.json")
    train_tf = build_transforms(weight_source, 224, train=True)  # weight_source: in_channels, mean, std, ...

Heavy modules (MONAI, pydicom, scikit-learn) are imported on first use of the
names below, so ``import cxrkit.data`` stays cheap.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from cxrkit.data.adapter import DatasetAdapter, DatasetSpec
from cxrkit.data.errors import BadImageError, BadImagesError, DatasetError, find_bad_image_error

__all__ = [
    "BadImageError",
    "BadImagesError",
    "CheckResult",
    "DatasetAdapter",
    "DatasetError",
    "DatasetSpec",
    "LeakageReport",
    "Split",
    "audit_leakage",
    "build_transforms",
    "check_images",
    "find_bad_image_error",
    "get_adapter",
    "load_dataset",
    "load_image",
    "load_split",
    "make_split",
]

_LAZY = {
    "CheckResult": "cxrkit.data.check",
    "check_images": "cxrkit.data.check",
    "LeakageReport": "cxrkit.data.split",
    "Split": "cxrkit.data.split",
    "audit_leakage": "cxrkit.data.split",
    "load_split": "cxrkit.data.split",
    "make_split": "cxrkit.data.split",
    "build_transforms": "cxrkit.data.transforms",
    "load_image": "cxrkit.data.readers",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrkit.data' has no attribute {name!r}")


def get_adapter(name: str) -> DatasetAdapter:
    """The dataset adapter registered as ``name`` (built-in or from an installed plugin).

    Raises:
        cxrkit.registry.RegistryError: unknown name (the message lists the known ones).
    """
    from cxrkit.registry import datasets

    return datasets.get(name)


def load_dataset(name: str, root: str | os.PathLike, task: str | None = None, **options: Any) -> DatasetSpec:
    """Read the dataset ``name`` from ``root`` for ``task``.

    Args:
        name: registry name (``radiography``, ``coronahack``, ``cohen``, ``folder``, ``csv`` or a plugin's).
        root: the dataset folder (or CSV file for ``csv``).
        task: the task; the adapter's default when omitted.
        **options: adapter options (see ``cxrkit data tasks``).

    Returns:
        The :class:`DatasetSpec`.

    Raises:
        DatasetError: the folder, task, options or files are not usable.
        cxrkit.registry.RegistryError: unknown dataset name.
    """
    return get_adapter(name).load(root, task, **options)
