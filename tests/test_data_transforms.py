"""build_transforms: shapes, channels, intensity, resize/crop, augmentation, caching, batching, bad files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from monai.data import CacheDataset, DataLoader, Dataset
from monai.transforms import Compose, Randomizable
from PIL import Image

from cxrkit.data import BadImageError, build_transforms, find_bad_image_error, load_dataset, load_image
from support.paths import shared_data

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class Source:
    """Stand-in for cxrkit.weights.WeightSource (the attributes build_transforms reads)."""

    in_channels: int = 3
    mean: tuple = IMAGENET[0]
    std: tuple = IMAGENET[1]
    intensity_range: tuple | None = None


@pytest.fixture(scope="module")
def cohen():
    return load_dataset("cohen", shared_data("cohen"))


def test_rgb_imagenet_output(cohen):
    item = cohen.items[0]
    out = build_transforms(Source(), 48, train=False)(dict(item))
    image = out["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
    assert tuple(image.shape) == (3, 48, 48)
    assert out["label"].dtype == torch.int64 and out["label"].ndim == 0 and int(out["label"]) == item["label"]
    assert out["image_path"] == item["image"] and out["label_name"] == item["label_name"]
    # channels are the same grey picture, each normalised with its own mean/std
    grey = image * torch.tensor(IMAGENET[1]).view(3, 1, 1) + torch.tensor(IMAGENET[0]).view(3, 1, 1)
    assert torch.allclose(grey[0], grey[1], atol=1e-5) and torch.allclose(grey[0], grey[2], atol=1e-5)
    assert 0.0 <= float(grey.min()) and float(grey.max()) <= 1.0 + 1e-5
    # the resized picture is the source picture (area interpolation = block means) on the 8-bit grid k / 255
    full = load_image(item["image"])
    ref = torch.nn.functional.interpolate(torch.from_numpy(full)[None, None], size=(48, 48), mode="area")[0, 0]
    assert torch.allclose(grey[0], torch.round(ref * 255) / 255, atol=1e-5)
    assert not torch.allclose(ref, torch.round(ref * 255) / 255, atol=1e-5)  # the rounding is a real step here


def test_one_channel_intensity_range_and_resize_crop():
    path = shared_data("dicom", "CR-MONO1-10-chest")
    src = Source(in_channels=1, mean=(0.5,), std=(0.5,), intensity_range=(-1024.0, 1024.0))
    out = build_transforms(src, 32, train=False, resize=64)({"image": str(path), "label": 1})
    image = out["image"]
    assert tuple(image.shape) == (1, 32, 32)
    assert -1024.0 <= float(image.min()) and float(image.max()) <= 1024.0
    # centre crop of the 64 px resize
    full = torch.from_numpy(load_image(path))[None, None]
    ref = torch.nn.functional.interpolate(full, size=(64, 64), mode="area")[0, 0, 16:48, 16:48]
    assert torch.allclose(image[0], torch.round(ref * 255) / 255 * 2048 - 1024, atol=0.05)


def test_augmentation_only_when_training_and_asked(cohen):
    item = cohen.items[0]
    train_aug = build_transforms(Source(), 32, train=True, augment=True)
    assert any(isinstance(t, Randomizable) for t in train_aug.transforms)
    for tf in (build_transforms(Source(), 32, train=True), build_transforms(Source(), 32, train=False, augment=True)):
        assert not any(isinstance(t, Randomizable) for t in tf.transforms)
        assert torch.equal(tf(dict(item))["image"], tf(dict(item))["image"])
    train_aug.set_random_state(seed=0)
    outs = [train_aug(dict(item))["image"] for _ in range(6)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])
    # every random transform comes after the deterministic (cacheable) load and resize
    kinds = [isinstance(t, Randomizable) for t in train_aug.transforms]
    first_random = kinds.index(True)
    names = [type(t).__name__ for t in train_aug.transforms[:first_random]]
    assert "LoadImaged" in names and "Resized" in names


def test_cache_dataset_and_batches_with_unknown_patients(cohen):
    tf = build_transforms(Source(), 32, train=False)
    assert isinstance(tf, Compose)
    items = cohen.items[:6] + [{**cohen.items[0], "patient_id": None}]
    cached = CacheDataset(items, tf, num_workers=0, progress=False)
    plain = Dataset(items, tf)
    for k in range(len(items)):
        assert torch.allclose(cached[k]["image"], plain[k]["image"])
    batch = next(iter(DataLoader(cached, batch_size=7)))
    assert tuple(batch["image"].shape) == (7, 3, 32, 32)
    assert batch["label"].tolist() == [i["label"] for i in items]
    assert batch["patient_id"][-1] == ""


def test_bad_image_error_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    good = tmp_path / "fine.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(good)
    bad.write_bytes(good.read_bytes()[:40])
    tf = build_transforms(Source(), 16, train=False)
    with pytest.raises(BadImageError) as err:
        tf({"image": str(bad), "label": 0})
    assert err.value.path == str(bad) and "broken.png" in str(err.value)
    with pytest.raises(BadImageError, match="broken.png"):
        Dataset([{"image": str(bad), "label": 0}], tf)[0]
    # where MONAI wraps it (apply_transform, DataLoader workers), find_bad_image_error digs it out
    try:
        try:
            tf({"image": str(bad), "label": 0})
        except BadImageError as exc:
            raise RuntimeError("applying transform <Compose>") from exc
    except RuntimeError as wrapped:
        assert find_bad_image_error(wrapped).path == str(bad)
    assert find_bad_image_error(RuntimeError("other")) is None


def test_bad_spec_values():
    with pytest.raises(ValueError, match="3 values for 1 input channel"):
        build_transforms(Source(in_channels=1), 32, train=False)
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        build_transforms(Source(in_channels=2), 32, train=False)
    with pytest.raises(ValueError, match="resize"):
        build_transforms(Source(), 32, train=False, resize=16)
