"""Pretrained-weight sources (registry ``cxrkit.weights``) and their faithful loading.

A weight plugin is a :class:`WeightSource` record registered in
:data:`cxrkit.registry.weights` (built-ins in :mod:`cxrkit.weights.builtin`,
third parties through the ``cxrkit.weights`` entry-point group). Loading finds
the file locally (never downloads: only :func:`fetch`, ``cxrkit weights fetch``,
does, explicitly), opens it with ``weights_only=True`` after a
static scan of its pickles, applies the source's key filter and verifies every
backbone tensor before loading. Each file is marked verified, unverified or
unverifiable against its origin's published hash (:mod:`cxrkit.weights.provenance`).

Example:
    >>> from cxrkit.weights import build_pretrained_backbone
    >>> backbone, info = build_pretrained_backbone("random")
    >>> info["pretrained"]
    False

The loading functions import torch on first use, so listing plugins stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cxrkit.weights.errors import (
    CorruptCheckpointError,
    TrustedLoadWarning,
    UnsafeCheckpointError,
    UnverifiedWeightError,
    WeightError,
    WeightFileNotFoundError,
    WeightHashWarning,
    WeightMismatchError,
)
from cxrkit.weights.fetchspec import FetchSpec
from cxrkit.weights.source import IMAGENET_MEAN, IMAGENET_STD, WeightSource, get_source
from cxrkit.weights.store import find_weight_file, weights_dir

if TYPE_CHECKING:  # pragma: no cover
    from cxrkit.weights.backbone import build_pretrained_backbone
    from cxrkit.weights.fetching import FetchError, FetchResult, fetch, fetch_all
    from cxrkit.weights.install import ImportResult, import_weight_file
    from cxrkit.weights.load import LoadedWeights, LoadReport, load_pretrained, load_state_dict
    from cxrkit.weights.verify import adapt_conv_channels

__all__ = [
    "WeightSource",
    "FetchSpec",
    "fetch",
    "fetch_all",
    "FetchResult",
    "FetchError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "get_source",
    "find_weight_file",
    "weights_dir",
    "load_state_dict",
    "load_pretrained",
    "build_pretrained_backbone",
    "import_weight_file",
    "adapt_conv_channels",
    "LoadedWeights",
    "LoadReport",
    "ImportResult",
    "WeightError",
    "WeightFileNotFoundError",
    "WeightMismatchError",
    "UnsafeCheckpointError",
    "CorruptCheckpointError",
    "UnverifiedWeightError",
    "WeightHashWarning",
    "TrustedLoadWarning",
]

_LAZY = {
    "load_state_dict": "cxrkit.weights.load",
    "load_pretrained": "cxrkit.weights.load",
    "LoadedWeights": "cxrkit.weights.load",
    "LoadReport": "cxrkit.weights.load",
    "build_pretrained_backbone": "cxrkit.weights.backbone",
    "import_weight_file": "cxrkit.weights.install",
    "ImportResult": "cxrkit.weights.install",
    "adapt_conv_channels": "cxrkit.weights.verify",
    "fetch": "cxrkit.weights.fetching",
    "fetch_all": "cxrkit.weights.fetching",
    "FetchResult": "cxrkit.weights.fetching",
    "FetchError": "cxrkit.weights.download",
}


def __getattr__(name: str) -> Any:
    """Import the torch-dependent parts on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrkit.weights' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
