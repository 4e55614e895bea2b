"""A small CNN weight source (test-only) and training on the synthetic sets with a known answer.

The shortcut probes need models that really learn a corner marker or a signal
inside the lungs, in seconds on 2 CPU cores: a 4-stage CNN (8 x 8 grid at 64 px
in its last stage) registered as the weight plugin ``shortcut_cnn`` while a test
needs it (:func:`plugin_registered`), trained through the bundle runner like any
plugin (:func:`train_small`).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

__all__ = ["SHORTCUT_PLUGIN", "plugin_registered", "train_small"]

SHORTCUT_PLUGIN = "shortcut_cnn"


def small_cnn(in_channels: int = 3):
    """The backbone: four conv-BN-ReLU stages, global average pooling, 64 features."""
    import torch.nn as nn

    def block(i: int, o: int, stride: int) -> nn.Sequential:
        # momentum 0.5: running statistics follow the few dozen steps of a test run
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o, momentum=0.5),
                             nn.ReLU(inplace=True))

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.layer1 = block(in_channels, 16, 1), block(16, 32, 2)
            self.layer2, self.layer3 = block(32, 64, 2), block(64, 64, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.num_features = 64
            self.stages = ("stem", "layer1", "layer2", "layer3")

        def forward(self, x):
            return self.pool(self.layer3(self.layer2(self.layer1(self.stem(x))))).flatten(1)

    return SmallCNN()


@contextlib.contextmanager
def plugin_registered() -> Iterator[str]:
    """The weight source ``shortcut_cnn`` (a :func:`small_cnn`, no pretraining), registered while inside.

    Unregistered on the way out, so no other test sees a plugin cxrkit does not ship (the bundle check would).
    """
    from cxrkit.registry import backbones, weights
    from cxrkit.weights.source import WeightSource

    added = []
    if "small_cnn" not in backbones.names():
        backbones.register("small_cnn", small_cnn, origin="tests/support/shortcuts.py")
        added.append((backbones, "small_cnn"))
    if SHORTCUT_PLUGIN not in weights.names():
        weights.register(SHORTCUT_PLUGIN, WeightSource(
            name=SHORTCUT_PLUGIN, architecture="small_cnn", filenames=(), origin="tests/support/shortcuts.py",
            description="test-only small CNN, random initialisation", pretrained=False),
            origin="tests/support/shortcuts.py")
        added.append((weights, SHORTCUT_PLUGIN))
    try:
        yield SHORTCUT_PLUGIN
    finally:
        for registry, name in added:
            registry.unregister(name)


def train_small(bundles: Path, dataset_dir: Path, out: Path, **overrides) -> Path:
    """Train the ``shortcut_cnn`` bundle (generated under ``bundles``) into ``out`` with the bundle runner."""
    from cxrkit.bundle.folders import write_bundle
    from cxrkit.bundle.runner import run_bundle

    with plugin_registered():
        if not (bundles / SHORTCUT_PLUGIN).is_dir():
            write_bundle(SHORTCUT_PLUGIN, bundles / SHORTCUT_PLUGIN)
        values = {"dataset_dir": str(dataset_dir), "epochs": 5, "batch_size": 8, "image_size": 64, "head": "linear",
                  "lr": 0.003, "device": "cpu", "progress": False, "seed": 0, "output_dir": str(out)}
        values.update(overrides)
        run_bundle("training", bundles / SHORTCUT_PLUGIN, values)
    return out
