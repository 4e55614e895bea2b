"""The convolutional backbones of Apostolopoulos & Mpesiana (2020), built with timm.

VGG19, MobileNetV2, InceptionV3, Xception and InceptionResNetV2, each as timm
builds it, with the classifier removed and global average pooling kept, so a
backbone maps ``(B, C, H, W)`` to ``(B, num_features)`` like the torchvision
ResNets. Keras's ``include_top=False`` keeps no dense layer, and neither does
cxrkit's VGG19: timm's ``pre_logits`` (the 4096-wide fc6/fc7 as convolutions) is
left out, so its features are the 512 channels of the last convolution.

The state-dict keys are timm's; no built-in weight source targets them yet, so a
file for them needs a weight source whose filter maps its keys to timm's.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm
import torch.nn as nn

from cxrkit.networks.backbones import adapt_first_conv_channels
from cxrkit.registry import backbones

__all__ = ["ConvNetConfig", "CONVNET_CONFIGS"]

# the classifier and pooling children of timm's models: not stages
_HEAD_CHILDREN = ("head", "fc", "classifier", "classif", "global_pool", "pre_logits", "head_drop")


@dataclass(frozen=True)
class ConvNetConfig:
    """A timm convolutional network as a cxrkit backbone.

    Attributes:
        timm_name: ``timm.create_model`` name.
        title: human name.
        num_features: pooled feature width.
        native_size: input side of its ImageNet weights.
        min_size: smallest input side it accepts (Keras's documented minimum).
        drop_pre_logits: leave out timm's ``pre_logits`` block (VGG's fc6/fc7).
    """

    timm_name: str
    title: str
    num_features: int
    native_size: int
    min_size: int
    drop_pre_logits: bool = False

    def describe(self) -> str:
        """One line for ``cxrkit list backbones``."""
        return (f"{self.title} (timm {self.timm_name}): {self.num_features} features, native {self.native_size} "
                f"px, accepts {self.min_size} px and more")


CONVNET_CONFIGS: dict[str, ConvNetConfig] = {
    "vgg19": ConvNetConfig("vgg19", "VGG19", 512, 224, 32, drop_pre_logits=True),
    "mobilenetv2": ConvNetConfig("mobilenetv2_100", "MobileNetV2 (width 1.0)", 1280, 224, 32),
    "inception_v3": ConvNetConfig("inception_v3", "InceptionV3", 2048, 299, 75),
    "xception": ConvNetConfig("legacy_xception", "Xception (Chollet 2017, Keras layout)", 2048, 299, 71),
    "inception_resnet_v2": ConvNetConfig("inception_resnet_v2", "InceptionResNetV2", 1536, 299, 75),
}


def build_convnet(config: ConvNetConfig, in_channels: int = 3, image_size: int | None = None) -> nn.Module:
    """The timm network without classifier (pooled features), with ``num_features`` and ``stages``.

    Raises:
        ValueError: ``image_size`` below the network's minimum.
    """
    if image_size is not None and int(image_size) < config.min_size:
        raise ValueError(f"image size {image_size} px is too small for backbone {config.title}: it needs at "
                         f"least {config.min_size} px")
    model = timm.create_model(config.timm_name, pretrained=False, num_classes=0)
    if config.drop_pre_logits:
        model.pre_logits = nn.Identity()
    model.num_features = config.num_features
    model.stages = tuple(n for n, _ in model.named_children() if n not in _HEAD_CHILDREN)
    return adapt_first_conv_channels(model, in_channels)


def _register(name: str, config: ConvNetConfig) -> None:
    def factory(in_channels: int = 3, image_size: int | None = None) -> nn.Module:
        return build_convnet(config, in_channels, image_size)

    factory.__name__ = name
    factory.__doc__ = config.describe()
    backbones.register(name, factory, origin=f"cxrkit.networks.convnets:{name}")


for _name, _config in CONVNET_CONFIGS.items():
    _register(_name, _config)
