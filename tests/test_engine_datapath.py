"""The training data path: 8-bit decode per item or once into the image cache, batches finished on the device.

Runs on the CPU (the device is ``cpu``); the same code runs with the device
``cuda`` in ``tests/test_gpu.py``. Decisions that depend on the GPU (where the
cache lives, how many workers) are checked here with the numbers injected.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from monai.data import Dataset
from PIL import Image

from cxrkit.data import BadImageError, build_transforms
from cxrkit.data.batchtransforms import BatchTransform
from cxrkit.data.imagecache import CachedImages, DecodedImages, ImageCache, _allocate, cache_placement
from cxrkit.demo import make_synthetic_dataset
from cxrkit.engine import hardware
from cxrkit.engine.loaders import EpochItems, make_dataset, make_loader
from cxrkit.engine.resume import EpochSeededSampler


@dataclass
class Source:
    """The input specification build_transforms reads (a WeightSource stand-in)."""

    in_channels: int = 3
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    intensity_range: tuple | None = None


RGB = Source()
GREY_RANGE = Source(in_channels=1, mean=(0.5,), std=(0.5,), intensity_range=(-1024.0, 1024.0))


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=10, size=40, seed=1)
    files = sorted(root.glob("*/*.png"))
    return [{"image": str(f), "label": int(f.parent.name == "Normal"), "index": i} for i, f in enumerate(files)]


def _batches(loader) -> list[dict]:
    return [dict(batch) for batch in loader]


@pytest.mark.parametrize("source", [RGB, GREY_RANGE], ids=["rgb-mean-std", "grey-intensity-range"])
def test_cached_and_decoded_batches_equal_the_preprocessing_chain(items, source):
    chain = build_transforms(source, 32, train=False)
    cached = make_dataset(items, chain, cache=True, device="cpu")
    decoded = make_dataset(items, chain, cache=False, device="cpu")
    assert isinstance(cached, CachedImages) and isinstance(decoded, DecodedImages)
    store = cached.cache
    assert store.images.dtype == torch.uint8 and tuple(store.images.shape) == (20, 1, 32, 32)
    assert store.placement == "cpu" and store.nbytes == 20 * 32 * 32
    for a, b in zip(_batches(make_loader(cached, 6, device="cpu")), _batches(make_loader(decoded, 6, device="cpu")),
                    strict=True):
        assert set(a) == set(b) == {"image", "label", "index", "image_path"}  # position and epoch are consumed
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
        assert a["index"].tolist() == b["index"].tolist() and a["image_path"] == b["image_path"]
        expected = torch.stack([chain(dict(items[i]))["image"].as_tensor() for i in a["index"].tolist()])
        torch.testing.assert_close(a["image"], expected, atol=1e-5, rtol=0)  # the whole chain, to float rounding
        assert a["label"].tolist() == [items[i]["label"] for i in a["index"].tolist()]
        assert a["image"].shape[1] == source.in_channels


def test_channels_last_batches_and_features_pass_through(items):
    chain = build_transforms(RGB, 32, train=False)
    batch = next(iter(make_loader(make_dataset(items, chain, device="cpu", channels_last=True), 4, device="cpu")))
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    features = [{"image": torch.full((5,), float(i)), "label": 0, "index": i} for i in range(6)]
    plain = make_dataset(features, None, cache=True)  # a linear probe's cached features: no image steps
    assert isinstance(plain, Dataset)
    batch = next(iter(make_loader(plain, 4, device="cpu")))
    assert batch["image"].shape == (4, 5) and batch["index"].tolist() == [0, 1, 2, 3]


def test_augmentation_depends_only_on_seed_epoch_and_item():
    spec = build_transforms(RGB, 32, train=True, augment=True).batch_spec
    assert spec.augment and spec.max_rotation_degrees == 10.0 and spec.zoom == (0.9, 1.1)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 32, 32), dtype=torch.uint8, generator=generator)
    augment = BatchTransform(spec, length=40, seed=5)

    def run(transform, positions, epoch):
        return transform.images(images[positions], torch.tensor(positions), torch.full((len(positions),), epoch))

    a, b = run(augment, [3, 7, 11], 2), run(augment, [11, 5, 3, 7], 2)
    assert torch.equal(a[0], b[2]) and torch.equal(a[1], b[3]) and torch.equal(a[2], b[0])  # batch-independent
    everything = list(range(40))
    epoch2, epoch3 = run(augment, everything, 2), run(augment, everything, 3)
    assert not torch.equal(epoch2, epoch3)
    assert not torch.equal(epoch2, run(BatchTransform(spec, length=40, seed=6), everything, 2))
    plain = BatchTransform(dataclasses.replace(spec, augment=False), length=40).images(images)
    moved = [not torch.equal(epoch2[i], plain[i]) for i in everything]
    assert 10 < sum(moved) < 40  # each item is rotated and/or zoomed with probability 0.75
    theta = augment.affine(torch.arange(40), torch.full((40,), 2))
    zoom = 1.0 / torch.sqrt(torch.linalg.det(theta[:, :, :2]))
    angle = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert float(angle.abs().max()) <= 10.0 + 1e-4 and float(angle.abs().max()) > 1.0
    assert 0.9 - 1e-5 <= float(zoom.min()) < 1.0 < float(zoom.max()) <= 1.1 + 1e-5
    with pytest.raises(ValueError, match="position and epoch"):
        augment.images(images[:2])


def test_zooming_out_pads_with_black_like_the_film_border():
    spec = dataclasses.replace(build_transforms(GREY_RANGE, 32, train=True, augment=True).batch_spec,
                               probability=1.0, max_rotation_degrees=0.0, zoom=(0.8, 0.8))
    white = torch.full((1, 1, 32, 32), 255, dtype=torch.uint8)
    out = BatchTransform(spec, length=1).images(white, torch.tensor([0]), torch.tensor([1]))
    assert float(out[0, 0, 0, 0]) == -1024.0  # black, scaled to the intensity range
    assert float(out[0, 0, 16, 16]) == pytest.approx(1024.0)  # the middle is still the image


def test_persistent_workers_give_each_epoch_the_data_of_a_fresh_loader(items):
    """Workers live across epochs; an item's random draws come from (seed, epoch, index), so epoch 2 read
    after epoch 1 equals epoch 2 read by a new loader, as a resumed run reads it."""
    augmented = build_transforms(RGB, 32, train=True, augment=True)
    decoded = make_loader(make_dataset(items, augmented, device="cpu", seed=4), 4, shuffle=True, seed=4,
                          num_workers=2, device="cpu")
    monai_items = make_loader(Dataset(items, augmented), 4, shuffle=True, seed=4, num_workers=2, device="cpu")
    for loader, fresh_dataset in ((decoded, lambda: make_dataset(items, augmented, device="cpu", seed=4)),
                                  (monai_items, lambda: Dataset(items, augmented))):
        assert loader.persistent_workers and loader.num_workers == 2 and loader.prefetch_factor >= 2
        first = _batches(loader)
        loader.sampler.set_epoch(2)
        second = _batches(loader)
        fresh = make_loader(fresh_dataset(), 4, shuffle=True, seed=4, num_workers=0, device="cpu")
        fresh.sampler.set_epoch(2)
        again = _batches(fresh)
        assert [b["index"].tolist() for b in second] == [b["index"].tolist() for b in again]
        assert all(torch.equal(x["image"], y["image"]) for x, y in zip(second, again, strict=True))
        assert [b["index"].tolist() for b in first] != [b["index"].tolist() for b in second]
    assert isinstance(monai_items.dataset, EpochItems)


def test_sampler_hands_out_index_epoch_pairs():
    data = list(range(7))
    sampler = EpochSeededSampler(data, seed=2, with_epoch=True)
    sampler.set_epoch(3)
    pairs = list(sampler)
    assert [p[1] for p in pairs] == [3] * 7 and sorted(p[0] for p in pairs) == data
    plain = EpochSeededSampler(data, seed=2)
    plain.set_epoch(3)
    assert list(plain) == [p[0] for p in pairs]


def test_cache_fills_in_worker_processes_and_names_a_bad_image(items, tmp_path, caplog):
    chain = build_transforms(RGB, 32, train=False)
    decoded = DecodedImages(items, chain.decode_part())
    in_process = ImageCache.fill(decoded, "cpu", workers=0, progress=False)
    with caplog.at_level(logging.INFO, logger="cxrkit.data.imagecache"):
        parallel = ImageCache.fill(decoded, "cpu", workers=2, progress=False)
    assert torch.equal(in_process.images, parallel.images) and "2 worker(s)" in caplog.text
    broken = tmp_path / "broken.png"
    broken.write_bytes(Image.fromarray(np.zeros((40, 40), np.uint8)).tobytes()[:100])  # not a PNG at all
    bad = DecodedImages(items[:5] + [{"image": str(broken), "label": 0, "index": 5}] + items[5:8], chain.decode_part())
    with pytest.raises(BadImageError, match="broken.png"):
        ImageCache.fill(bad, "cpu", workers=2, progress=False)


def test_where_the_cache_lives():
    gpu = torch.device("cuda")  # a device name only: nothing here touches a GPU
    images_224 = 15_000 * 224 * 224  # 15,000 images at 224 px, 8 bits: 0.75 GB
    assert cache_placement(images_224, "cpu") == "cpu"
    assert cache_placement(images_224, gpu, free_bytes=40 * 2**30) == "cuda"
    assert cache_placement(images_224, gpu, free_bytes=2 * 2**30) == "pinned"  # would take over a quarter
    assert cache_placement(2**30, gpu, free_bytes=4 * 2**30) == "cuda"  # exactly a quarter
    with pytest.raises(ValueError, match="uint8"):
        ImageCache(torch.zeros(2, 1, 4, 4), "cpu")


def test_pinned_memory_that_cannot_be_had_falls_back_to_plain_memory(monkeypatch, caplog):
    real = torch.empty

    def no_pinning(*args, **kwargs):
        if kwargs.get("pin_memory"):
            raise RuntimeError("no pinned memory here")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_pinning)
    with caplog.at_level(logging.WARNING, logger="cxrkit.data.imagecache"):
        images = _allocate((3, 1, 8, 8), "pinned", torch.device("cpu"))
    assert images.shape == (3, 1, 8, 8) and not images.is_pinned() and "plain host memory" in caplog.text


def test_automatic_workers_and_validation_batch(monkeypatch):
    gpu = torch.device("cuda")
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert hardware.loader_workers("auto", "cpu") == 0 and hardware.loader_workers(None, "cpu") == 0
    assert hardware.loader_workers("auto", gpu) == 8
    assert hardware.loader_workers(3, gpu) == 3 and hardware.loader_workers("0", gpu) == 0  # numbers are honoured
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 processes share the 16 cores
    assert hardware.loader_workers("auto", gpu) == 3
    monkeypatch.setattr(hardware.os, "cpu_count", lambda: 1)
    assert hardware.loader_workers("auto", gpu) == 1
    with pytest.raises(ValueError, match="--num_workers"):
        hardware.loader_workers("many", gpu)
    assert hardware.val_batch_size("auto", 32, "cpu") == 32
    assert hardware.val_batch_size("auto", 32, gpu) == 32 * hardware.VAL_BATCH_FACTOR
    assert hardware.val_batch_size(100, 32, gpu) == 100
    with pytest.raises(ValueError, match="--val_batch_size"):
        hardware.val_batch_size(0, 32, gpu)


def test_a_loader_starts_no_more_workers_than_batches(items):
    chain = build_transforms(RGB, 32, train=False)
    loader = make_loader(make_dataset(items[:3], chain, device="cpu"), 8, num_workers=4, device="cpu")
    assert loader.num_workers == 1 == math.ceil(3 / 8)
    cached = make_loader(make_dataset(items, chain, cache=True, device="cpu"), 8, num_workers=4, device="cpu")
    assert cached.num_workers == 0  # the cache is read in this process
