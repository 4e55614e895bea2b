"""A tiny trained run folder (trained once per session) and fabricated weight files for training tests."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision.models as tvm

from support.paths import REPO, shared_data
from support.weights import LAYOUTS, save

__all__ = ["train_tiny_run", "write_inat_swav"]


def train_tiny_run(root: Path) -> Path:
    """Train (or reuse) the session's tiny run folder under ``root``: 32 px, 1 epoch, 40 real radiographs."""
    from cxrkit.cli import main

    run = root / "tiny_run"
    if (run / "models" / "model.pt").is_file() and (run / "predictions.csv").is_file():
        return run
    data = shared_data("radiography")
    rc = main(["run", "training", str(REPO / "bundles" / "inat_swav"),
               "--dataset_dir", str(data), "--image_size", "32", "--epochs", "1", "--batch_size", "8",
               "--allow_missing_weights", "true", "--max_items", "40", "--output_dir", str(run),
               "--device", "cpu", "--progress", "false", "--tensorboard_images", "0"])
    assert rc == 0 and (run / "models" / "model.pt").is_file(), "training the tiny run failed"
    return run


def write_inat_swav(folder: Path, seed: int = 0) -> Path:
    """An ``inat_swav`` checkpoint in its real layout (SwAV training wrapper, ``module.`` keys, projection
    head, optimizer and amp state) holding a freshly initialised torchvision ResNet50, so the frozen
    backbone gives finite features in evaluation mode (unit batch-norm variances)."""
    torch.manual_seed(seed)
    state = {k: v for k, v in tvm.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    layout = LAYOUTS["inat_swav"]
    return save(layout.build(state), folder / layout.filename)
