"""One call from a plugin name to a backbone holding its verified pretrained weights."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch.nn as nn

from cxrkit.weights.errors import WeightFileNotFoundError
from cxrkit.weights.load import load_pretrained
from cxrkit.weights.source import get_source

__all__ = ["build_pretrained_backbone"]

logger = logging.getLogger(__name__)


def build_pretrained_backbone(
    plugin: str,
    weights_path: str | os.PathLike[str] | None = None,
    *,
    trust: bool = False,
    in_channels: int | None = None,
    allow_missing: bool = False,
    image_size: int | None = None,
    **backbone_options: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``plugin``'s backbone architecture and load its weights.

    Args:
        plugin: registered weight-source name (``"imagenet"``, ``"inat_swav"``, ``"random"``...).
        weights_path: explicit weight file or folder (default: search the usual places).
        trust: allow full unpickling of a file the safe loader refuses (warns).
        in_channels: input channels of the backbone (default: the source's); the
            first convolution's weights are adapted between 1 and 3 channels.
        allow_missing: when the file is not found, log a warning that says how to
            get it and return a randomly initialised backbone instead of raising.
        image_size: input side in pixels (default: the source's ``input_size``); a ViT is built for it
            and the file's position embedding resampled to it.
        backbone_options: passed to the backbone factory (ViTs: ``pool``, ``drop_path_rate``,
            ``grad_checkpointing``).

    Returns:
        ``(backbone, info)`` where ``info`` has ``plugin``, ``architecture``,
        ``path`` (str or None), ``sha256`` (or None), ``pretrained`` (bool), and,
        when weights were loaded, ``matched``, ``hash_ok``, ``verification`` (``"verified"``,
        ``"unverified"`` or ``"unverifiable"``, see :mod:`cxrkit.weights.provenance`) and
        ``channels_adapted``.

    Raises:
        cxrkit.registry.RegistryError: unknown plugin or architecture.
        cxrkit.weights.WeightError: the file is missing (unless ``allow_missing``),
            unsafe, corrupt or does not fit.
    """
    from cxrkit.networks.backbones import build_backbone

    source = get_source(plugin)
    backbone = build_backbone(source.architecture, in_channels or source.in_channels,
                              image_size=image_size or source.input_size, **backbone_options)
    info: dict[str, Any] = {
        "plugin": source.name,
        "architecture": source.architecture,
        "path": None,
        "sha256": None,
        "pretrained": False,
    }
    if not source.pretrained:
        logger.info("plugin %s: %s randomly initialised (no pretraining)", source.name, source.architecture)
        return backbone, info
    try:
        report = load_pretrained(backbone, source, weights_path, trust=trust)
    except WeightFileNotFoundError as exc:
        if not allow_missing:
            raise
        logger.warning(
            "weights for plugin '%s' not found; continuing with a RANDOMLY INITIALISED %s. To use the "
            "pretrained weights, run `%s` (or `%s` for a file you have)\n%s",
            source.name, source.architecture, source.fetch_command(), source.import_command(), exc,
        )
        return backbone, info
    info.update(
        path=str(report.path),
        sha256=report.sha256,
        pretrained=True,
        matched=report.matched,
        hash_ok=report.hash_ok,
        verification=report.verification,
        channels_adapted=report.channels_adapted,
    )
    return backbone, info
