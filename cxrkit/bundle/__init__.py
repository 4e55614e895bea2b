"""MONAI bundles from one base config shipped in the package (``cxrkit/bundle/templates/``).

:mod:`cxrkit.bundle.render` renders configs, metadata and texts for any registered weight
plugin; :mod:`cxrkit.bundle.folders` writes bundle folders, finds a bundle by path or plugin
name (rendering one when needed, so a plain wheel install works) and generates the repository's
self-contained ``bundles/<plugin>/`` (``sync``) and compares them (``check``).
``cxrkit bundle write|check|sync`` is the command line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxrkit.bundle.folders import (
    BundleNotFoundError,
    bundles_root,
    cached_bundle,
    config_files,
    find_bundle,
    write_bundle,
)

if TYPE_CHECKING:
    from cxrkit.weights import WeightSource

__all__ = [
    "BundleNotFoundError",
    "bundles_root",
    "cached_bundle",
    "config_files",
    "find_bundle",
    "write_bundle",
    "plugin_source",
]


def plugin_source(plugin: str | None) -> WeightSource:
    """The weight source a bundle config names (its ``weight_source`` id).

    Raises:
        ValueError: no plugin set (the base config alone); the message says how to set one.
        cxrkit.registry.RegistryError: no weight plugin of that name.
    """
    if not plugin:
        raise ValueError(
            "no weight plugin set: this is the base config. Run a plugin's bundle (cxrkit run training NAME, "
            "or bundles/<plugin>/configs/train.yaml), or pass --plugin NAME (`cxrkit list weights`)"
        )
    from cxrkit.weights import get_source

    return get_source(plugin)
