"""The chest X-ray classifier: a weight plugin's backbone plus a head.

:class:`CXRClassifier` is what every bundle config builds as ``network_def``.
For training it loads the plugin's pretrained backbone through
:func:`cxrkit.weights.build_pretrained_backbone` (verified keys, sha256 recorded
in :attr:`CXRClassifier.weights_info`). For inference and serving it is built
with ``pretrained=False``: no weight file is looked for, because the run's
``models/model.pt`` supplies every tensor.

Freezing follows Apostolopoulos & Mpesiana (2020)'s layer cut-off: every
backbone stage up to and including ``freeze_until`` (a name from the backbone's
``stages``, e.g. ``layer3`` for ResNets) gets ``requires_grad=False`` and its
batch-norm layers stay in eval mode, so their running statistics are kept.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn as nn

from cxrkit import options
from cxrkit.networks.heads import build_head

__all__ = ["CXRClassifier", "freeze_stages", "FREEZE_ALL"]

logger = logging.getLogger(__name__)

#: ``freeze_until`` value that freezes the whole backbone (linear probing).
FREEZE_ALL = "all"
def freeze_stages(backbone: nn.Module, until: str | None) -> list[str]:
    """Freeze ``backbone``'s stages from the input up to and including ``until``.

    Args:
        backbone: a backbone with a ``stages`` attribute (top-level child names, input first).
        until: a stage name, ``"all"`` for every stage, or ``None`` for none.

    Returns:
        The names of the frozen stages, input first.

    Raises:
        ValueError: ``until`` is not one of the backbone's stages; the message lists them.
    """
    until = options.text(until)
    if until is None:
        return []
    stages = list(getattr(backbone, "stages", ()) or ())
    if not stages:
        raise ValueError(f"{type(backbone).__name__} declares no `stages`, so it cannot be frozen by stage")
    if until == FREEZE_ALL:
        chosen = stages
    elif until in stages:
        chosen = stages[: stages.index(until) + 1]
    else:
        raise ValueError(
            f"unknown stage {until!r} for --freeze_until; this backbone's stages are "
            f"{', '.join(stages)} (or '{FREEZE_ALL}' for the whole backbone)"
        )
    for name in chosen:
        for param in backbone.get_submodule(name).parameters():
            param.requires_grad_(False)
    for param in backbone.parameters(recurse=False):  # a ViT's class token and position embedding: with the
        param.requires_grad_(False)                    # first stage (a ResNet has none)
    return chosen


class CXRClassifier(nn.Module):
    """Backbone of a weight plugin + classification head.

    Args:
        plugin: weight-plugin name (``cxrkit list weights``), e.g. ``"inat_swav"``.
        num_classes: number of output classes (at least 2).
        head: ``"study"`` (default), ``"linear"`` or ``"sun2024"``; see :mod:`cxrkit.networks.heads`.
        weights_path: the plugin's weight file; ``None`` lets the plugin look in its usual places.
        freeze_until: freeze backbone stages up to this one (``"all"`` for the whole backbone).
        trust_weights: allow full unpickling of a weight file that ``weights_only`` cannot open.
            Only for files you trust.
        allow_missing_weights: when the plugin's file is absent, start from random
            initialisation with a warning instead of failing.
        in_channels: input channels; default: the plugin's own.
        pretrained: ``False`` builds the plugin's architecture with random weights and
            never looks for a file (inference and serving, where ``models/model.pt``
            supplies the weights).
        dropout: dropout probability of the head.
        image_size: input side in pixels (default: the plugin's ``input_size``); a ViT is built for it.
        pool: ViT pooling, ``token`` (class token), ``mean`` (patch tokens) or ``map``; default: the backbone's.
        drop_path_rate: ViT stochastic depth (fine-tuning regulariser); 0 for none.
        grad_checkpointing: recompute a ViT's block activations in the backward pass (less GPU memory).

    Attributes:
        backbone: the feature extractor (``num_features``, ``stages``).
        head: the classification head.
        weights_info: ``{"plugin", "architecture", "path", "sha256", "pretrained"}`` of the
            backbone's initial weights (written to the run's ``weights.json``).
        frozen_stages: names of the frozen backbone stages.

    Raises:
        cxrkit.weights.load.WeightError: the weight file is missing (and not allowed to be),
            unsafe or does not fit the backbone.
        ValueError: bad head, class count or stage name.
    """

    def __init__(
        self,
        plugin: str,
        num_classes: int,
        head: str = "study",
        weights_path: str | None = None,
        freeze_until: str | None = None,
        trust_weights: bool = False,
        allow_missing_weights: bool = False,
        in_channels: int | None = None,
        pretrained: bool = True,
        dropout: float = 0.5,
        image_size: int | None = None,
        pool: str | None = None,
        drop_path_rate: float | None = None,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        from cxrkit.weights import build_pretrained_backbone, get_source

        source = get_source(plugin)
        channels = int(in_channels) if in_channels else int(source.in_channels)
        size = int(image_size) if image_size else int(source.input_size)
        backbone_options = {"pool": options.text(pool), "drop_path_rate": float(drop_path_rate or 0.0),
                            "grad_checkpointing": options.flag(grad_checkpointing, "grad_checkpointing")}
        if options.flag(pretrained, "pretrained"):
            self.backbone, info = build_pretrained_backbone(
                plugin,
                options.text(weights_path),
                trust=options.flag(trust_weights, "trust_weights"),
                in_channels=channels,
                allow_missing=options.flag(allow_missing_weights, "allow_missing_weights"),
                image_size=size,
                **backbone_options,
            )
            self.weights_info: dict[str, Any] = dict(info)
        else:
            from cxrkit.networks.backbones import build_backbone

            self.backbone = build_backbone(source.architecture, in_channels=channels, image_size=size,
                                           **backbone_options)
            self.weights_info = {
                "plugin": source.name,
                "architecture": source.architecture,
                "path": None,
                "sha256": None,
                "pretrained": False,
            }
        self.image_size = size
        self.num_classes = int(num_classes)
        self.in_channels = channels
        self.head_name = head
        self.head = build_head(head, self.backbone.num_features, self.num_classes, dropout=dropout)
        self.frozen_stages = freeze_stages(self.backbone, freeze_until)
        if self.frozen_stages:
            logger.info("frozen backbone stages: %s", ", ".join(self.frozen_stages))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W)`` images to ``(B, num_classes)`` logits."""
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> "CXRClassifier":
        """Set training mode; frozen stages stay in eval mode (batch-norm statistics are kept)."""
        super().train(mode)
        for name in self.frozen_stages:
            self.backbone.get_submodule(name).eval()
        return self

    def extra_repr(self) -> str:
        frozen = ",".join(self.frozen_stages) or "none"
        return f"plugin={self.weights_info.get('plugin')}, head={self.head_name}, frozen={frozen}"
