"""A tiny trained run folder (trained once per session) and fabricated weight files for training tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torchvision.models as tvm

from support.paths import REPO, shared_data
from support.weights import LAYOUTS, save

__all__ = ["synthetic_csv_dataset", "train_tiny_run", "write_inat_swav"]


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


def synthetic_csv_dataset(root: Path, n: int = 12, size: int = 32, seed: int = 0) -> Path:
    """``n`` synthetic ``size`` px radiographs, COVID and Normal in turn, listed in ``root/labels.csv`` (the ``csv``
    dataset adapter: ``--dataset csv --dataset_dir root``)."""
    from PIL import Image

    from cxrkit.demo import synthetic_xray

    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for i in range(n):
            Image.fromarray(synthetic_xray(i % 2 == 0, size, rng)).save(root / "img" / f"{i}.png")
            writer.writerow([f"img/{i}.png", ["COVID", "Normal"][i % 2]])
    return root


def write_inat_swav(folder: Path, seed: int = 0) -> Path:
    """An ``inat_swav`` checkpoint in its real layout (SwAV training wrapper, ``module.`` keys, projection
    head, optimizer and amp state) holding a freshly initialised torchvision ResNet50, so the frozen
    backbone gives finite features in evaluation mode (unit batch-norm variances)."""
    torch.manual_seed(seed)
    state = {k: v for k, v in tvm.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    layout = LAYOUTS["inat_swav"]
    return save(layout.build(state), folder / layout.filename)
