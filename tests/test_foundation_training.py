"""A foundation source trains by name, predicts with Grad-CAM on its ViT, and probes linearly.

The weight file is fabricated at full size by the source's own library
(transformers ``Dinov2Model`` with RAD-DINO's published shape: ViT-B/14, 518 px)
and trained on real radiographs at 56 px (a 4 x 4 patch grid: the position
embedding is resampled from 37 x 37).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from support import foundation as fab
from support.paths import shared_data


@pytest.fixture(scope="module")
def rad_dino_file(tmp_path_factory):
    fab.require("transformers")
    from transformers import Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("rad-dino")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=518, patch_size=14, layerscale_value=1.0)).save_pretrained(
        str(folder), safe_serialization=True)
    return folder / "model.safetensors"


@pytest.mark.slow
def test_rad_dino_trains_by_name_and_predicts_with_grad_cam(rad_dino_file, tmp_path, capsys):
    from cxrkit.cli import main

    data = shared_data("radiography")
    run = tmp_path / "run"
    rc = main(["run", "training", "rad_dino", "--weights_path", str(rad_dino_file), "--dataset_dir", str(data),
               "--image_size", "56", "--epochs", "1", "--batch_size", "4", "--max_items", "12",
               "--output_dir", str(run), "--device", "cpu", "--progress", "false", "--tensorboard_images", "0",
               "--lr", "1e-5", "--drop_path_rate", "0.1", "--grad_checkpointing", "true",
               "--opt", "adamw", "--weight_decay", "0.05", "--layer_decay", "0.65", "--lr_schedule", "cosine",
               "--warmup_epochs", "0.25",
               "--freeze_until", "blocks.10"])  # the last block, final norm and head train: a small optimiser state
    assert rc == 0 and (run / "models" / "model.pt").is_file()
    weights = json.loads((run / "weights.json").read_text())
    assert weights["plugin"] == "rad_dino" and weights["pretrained"] and weights["architecture"] == \
        "vit_base_patch14_dinov2"
    assert "37x37 -> 4x4" in weights["channels_adapted"]
    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    assert len(epochs) == 1 and 0 < epochs[0]["lr"] < 1e-5  # the cosine schedule moved the rate

    images = sorted((data / "COVID-19_Radiography_Dataset" / "COVID").glob("*.png"))[:2]
    cams = tmp_path / "cams"
    capsys.readouterr()
    rc = main(["predict", str(run), *map(str, images), "--cam", str(cams), "--json", "--no-progress"])
    assert rc == 0
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    assert len(predictions) == 2
    assert sorted(p.name for p in cams.glob("*.png")) == sorted(f"{i.stem}_cam.png" for i in images)


def test_grad_cam_on_a_vit_reads_its_patch_grid():
    from cxrkit.networks.classifier import CXRClassifier
    from cxrkit.networks.heads import build_head
    from cxrkit.networks.vit import ViTBackbone, ViTConfig
    from cxrkit.serve import GradCAMExplainer

    torch.manual_seed(0)
    net = CXRClassifier("random", 2, head="linear", pretrained=False)
    # a CheXzero-shaped ViT (pre-norm, QuickGELU, patch 32), narrow and shallow for speed
    net.backbone = ViTBackbone(ViTConfig("tiny CLIP", 32, 64, 2, 2, 128, pre_norm=True, norm_eps=1e-5,
                                         act="quick_gelu"), "tiny", image_size=128)
    net.head = build_head("linear", 64, 2)
    net.eval()
    explainer = GradCAMExplainer(net)
    assert explainer.target_layer == "backbone.cam_grid"
    x = torch.randn(2, 3, 128, 128)
    maps = explainer(x, [0, 1])
    assert maps.shape == (2, 128, 128) and maps.max() == pytest.approx(1.0)
    assert len(np.unique(maps[0][::32, ::32])) > 1  # a 4 x 4 patch grid, not a constant map
    assert not np.allclose(maps[0], maps[1], atol=1e-3)
    assert not net.backbone.cam_grid._forward_hooks  # MONAI hooked a private copy
