"""Backbone factories: torchvision networks with their classifier removed.

Every factory returns an ``nn.Module`` mapping ``(B, C, H, W)`` images to
``(B, num_features)`` pooled features, with these attributes:

* ``num_features``: the width of the feature vector;
* ``stages``: top-level child names from input to output, used to freeze the
  backbone up to a named stage.

The state-dict keys are exactly torchvision's without the classifier, so a
torchvision checkpoint (after a weight plugin's key filter) loads strictly.
Weights are never fetched here: the weight plugins load local files.
"""

from __future__ import annotations

import inspect

import torch.nn as nn
import torchvision.models as tvm

from cxrkit.registry import backbones

__all__ = ["build_backbone", "adapt_first_conv_channels"]


def _first_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            return parent, attr, module
    raise ValueError("model has no Conv2d layer")


def adapt_first_conv_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Give ``model``'s first convolution ``in_channels`` inputs (new, untrained weights)."""
    parent, attr, conv = _first_conv(model)
    if conv.in_channels != in_channels:
        new = nn.Conv2d(
            in_channels,
            conv.out_channels,
            kernel_size=conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            bias=conv.bias is not None,
        )
        setattr(parent, attr, new)
    return model


def _resnet(factory, in_channels: int) -> nn.Module:
    model = factory(weights=None)
    model.num_features = model.fc.in_features
    model.fc = nn.Identity()
    model.stages = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    return adapt_first_conv_channels(model, in_channels)


@backbones.register("resnet50")
def resnet50(in_channels: int = 3) -> nn.Module:
    """ResNet-50 (torchvision layout): 2048 features, native 224 px, accepts 32 px and more."""
    return _resnet(tvm.resnet50, in_channels)


@backbones.register("resnet18")
def resnet18(in_channels: int = 3) -> nn.Module:
    """ResNet-18 (torchvision layout): 512 features, native 224 px, accepts 32 px and more."""
    return _resnet(tvm.resnet18, in_channels)


@backbones.register("densenet121")
def densenet121(in_channels: int = 3) -> nn.Module:
    """DenseNet-121 (torchvision layout, CheXNet's): 1024 features, native 224 px, accepts 32 px and more."""
    model = tvm.densenet121(weights=None)
    model.num_features = model.classifier.in_features
    model.classifier = nn.Identity()
    model.stages = tuple(f"features.{n}" for n, _ in model.features.named_children())
    return adapt_first_conv_channels(model, in_channels)


def build_backbone(name: str, in_channels: int = 3, image_size: int | None = None, **options: object) -> nn.Module:
    """Build the registered backbone ``name`` with ``in_channels`` input channels.

    Args:
        name: registry name (``cxrkit list backbones``).
        in_channels: input channels.
        image_size: input side in pixels, for backbones whose shape depends on it (ViTs: the
            position-embedding grid); ignored by the others.
        options: backbone options (ViTs: ``pool``, ``drop_path_rate``, ``grad_checkpointing``); an option
            the backbone does not take is an error, except ``None`` values, which mean "its default".

    Raises:
        cxrkit.registry.RegistryError: unknown backbone (the message lists the known ones).
        ValueError: an option the backbone does not take, or an image size it cannot use.
    """
    factory = backbones.get(name)
    params = inspect.signature(factory).parameters
    kwargs: dict[str, object] = {"in_channels": in_channels}
    if "image_size" in params and image_size is not None:
        kwargs["image_size"] = int(image_size)
    for key, value in options.items():
        if value is None or (key == "grad_checkpointing" and not value) or (key == "drop_path_rate" and not value):
            continue
        if key not in params:
            raise ValueError(f"backbone {name} takes no option {key!r} (it takes: "
                             f"{', '.join(p for p in params if p != 'in_channels') or 'none'})")
        kwargs[key] = value
    return factory(**kwargs)
