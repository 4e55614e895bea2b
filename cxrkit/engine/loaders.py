"""Datasets, seeded data loaders and batches: how prepared items reach the engines.

Bundle configs reach these through :mod:`cxrkit.engine.workflow`
(``cxrkit.engine.workflow.make_loader``...).

* :func:`make_dataset` - the training and validation datasets: each image
  loaded and resized on the CPU as 8 bits (:class:`~cxrkit.data.imagecache.DecodedImages`,
  or once for the whole run with ``cache: true``: :class:`~cxrkit.data.imagecache.CachedImages`),
  finished per batch on the device (:class:`~cxrkit.data.batchtransforms.BatchTransform`);
* :func:`make_loader` - a loader whose order depends only on ``(seed, epoch)``, with
  workers that live across epochs (``num_workers: auto`` on a GPU);
* :class:`EpochItems` - any other dataset (evaluation, inference, a linear probe's
  features) under that loader: random transforms seeded per ``(seed, epoch, index)``;
* :func:`prepare_batch` - the engines' ``prepare_batch``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from cxrkit import options
from cxrkit.engine.distributed import ShardedEpochSampler, world_size
from cxrkit.engine.hardware import loader_workers
from cxrkit.engine.resume import EpochSeededSampler, epoch_seed

__all__ = ["make_dataset", "make_loader", "prepare_batch", "EpochItems", "BatchLoader", "PREFETCH_FACTOR"]

logger = logging.getLogger(__name__)

#: batches each loader worker prepares ahead.
PREFETCH_FACTOR = 4


def _device(device: Any) -> torch.device:
    from cxrkit.engine.hardware import select_device

    return select_device("auto" if device is None else device)


def make_dataset(data: Sequence[Mapping[str, Any]], transform: Callable | None, cache: Any = False,
                 num_workers: Any = 0, device: Any = None, seed: Any = 0, channels_last: Any = "auto",
                 progress: Any = False) -> torch.utils.data.Dataset:
    """The dataset of a training or validation loader.

    With a preprocessing chain from :func:`cxrkit.data.transforms.build_transforms`,
    images are loaded and resized as 8 bits per item and finished per batch on
    ``device`` (augmentation, channels, intensity): decoded when asked for, or
    once into an :class:`~cxrkit.data.imagecache.ImageCache` when ``cache`` (on the
    GPU when it fits, else pinned host memory), filled by ``num_workers``
    processes with a progress bar. Both give the same batches. Items that are
    ready already (a linear probe's cached features) come with ``transform=None``;
    any other transform is applied per item by a MONAI ``Dataset``.

    Args:
        data: the items (``image``, ``label``, ``index``).
        transform: the preprocessing, or ``None``.
        cache: hold the decoded images in memory.
        num_workers: loader workers (``auto``: :func:`cxrkit.engine.hardware.loader_workers`), also filling the cache.
        device: where batches are finished (the run's device; ``None``: the CPU).
        seed: the run seed (the random draws of augmentation).
        channels_last: hand images over in ``channels_last`` format (``auto``: on a GPU, as the network).
        progress: progress bar while the cache fills.

    Raises:
        cxrkit.data.BadImageError: an image cannot be read while the cache fills.
        ValueError: bad option values.
    """
    from monai.data import Dataset

    from cxrkit.data.batchtransforms import BatchTransform
    from cxrkit.data.imagecache import CachedImages, DecodedImages, ImageCache, fill_workers

    items = list(data)
    decode = transform.decode_part() if callable(getattr(transform, "decode_part", None)) else None
    if decode is None:
        return Dataset(items, transform=transform)
    target = torch.device("cpu") if device is None else _device(device)
    last = options.auto_flag(channels_last, "channels_last", auto=target.type == "cuda")
    batch = BatchTransform(transform.batch_spec, len(items), seed=options.integer(seed, "seed"), device=target,
                           channels_last=last)
    decoded = DecodedImages(items, decode, batch)
    if not options.flag(cache, "cache"):
        return decoded
    workers = fill_workers(loader_workers(num_workers, target), len(items))
    store = ImageCache.fill(decoded, target, workers=workers, progress=options.flag(progress, "progress"))
    return CachedImages(items, store, batch)


class EpochItems(torch.utils.data.Dataset):
    """A dataset asked for items as ``(index, epoch)`` pairs; its random transforms are seeded per item.

    A loader worker that lives across epochs is seeded once; seeding each
    item's random transforms from ``(seed, epoch, index)`` where the item is
    made keeps every epoch's data independent of earlier epochs and of the
    process that made it (exact resume).

    Args:
        dataset: a map-style dataset (a MONAI ``Dataset`` with ``transform``, or plain items).
        seed: the run seed.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int = 0) -> None:
        from monai.transforms import Compose, Randomizable

        self.dataset = dataset
        self.seed = int(seed)
        transform = getattr(dataset, "transform", None)
        steps = transform.flatten().transforms if isinstance(transform, Compose) else (transform,)
        random = any(isinstance(t, Randomizable) and not isinstance(t, Compose) for t in steps)
        self._random = transform if random and isinstance(transform, Randomizable) else None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), None)
        if self._random is not None and epoch is not None:
            self._random.set_random_state(seed=epoch_seed(self.seed, epoch, 2, index) % 2**32)
        return self.dataset[index]


class BatchLoader(DataLoader):
    """A ``DataLoader`` whose batches are finished by the dataset's ``batch_transform`` as they are handed out.

    The transform runs in this process, on the run's device (the workers only
    decode); the time it takes counts as waiting for data.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.batch_transform = dataset.batch_transform  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        finish = self.batch_transform
        for batch in super().__iter__():
            yield finish(batch)


def _as_is(batch: Any) -> Any:
    return batch


def make_loader(dataset: torch.utils.data.Dataset, batch_size: Any = 32, shuffle: bool = False, seed: Any = 0,
                num_workers: Any = 0, device: Any = None) -> torch.utils.data.DataLoader:
    """A loader whose order depends only on ``(seed, epoch)`` (see :mod:`cxrkit.engine.resume`).

    The sampler hands out ``(index, epoch)`` pairs, so an item's random draws
    depend on ``(seed, epoch, index)`` wherever it is made. Workers
    (``num_workers``; ``auto``: none on a CPU, up to 8 on a GPU) stay alive
    across epochs and prepare :data:`PREFETCH_FACTOR` batches each ahead; no
    more workers than batches are started. Batches for a GPU are pinned. A
    dataset from :func:`make_dataset` gets a :class:`BatchLoader` (its batches
    finished on the device; an image cache is read in this process, without
    workers). A training loader drops a last batch of a single image (batch
    norm cannot train on one value). Under ``torchrun`` each process reads its
    shard (:class:`cxrkit.engine.distributed.ShardedEpochSampler`: padded for
    training, exact for validation).

    Args:
        dataset: the dataset.
        batch_size: images per batch.
        shuffle: a new seeded order every epoch (training) or ``0..n-1`` (validation).
        seed: the run seed.
        num_workers: loader processes, or ``auto``.
        device: the run's device (``auto`` workers, pinning); ``None``: CUDA when available.

    Raises:
        ValueError: ``batch_size`` below 1 or ``num_workers`` below 0.
    """
    from monai.data import DataLoader as MonaiDataLoader

    from cxrkit.data.imagecache import CachedImages

    batch_size = int(options.integer(batch_size, "batch_size", minimum=1))
    seed = int(options.integer(seed, "seed"))
    target = _device(device)
    finished = getattr(dataset, "batch_transform", None) is not None
    if not finished and not isinstance(dataset, EpochItems):
        dataset = EpochItems(dataset, seed)
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, 0, 1))
    if world_size() > 1:
        sampler: EpochSeededSampler = ShardedEpochSampler(dataset, seed=seed, shuffle=bool(shuffle),
                                                          pad=bool(shuffle), with_epoch=True)
    else:
        sampler = EpochSeededSampler(dataset, seed=seed, shuffle=bool(shuffle), with_epoch=True)
    drop_last = bool(shuffle) and len(sampler) > 1 and len(sampler) % batch_size == 1
    if drop_last:
        logger.info("dropping the last training batch of 1 image (batch norm needs 2)")
    cached = isinstance(dataset, CachedImages)
    ready = isinstance(dataset, EpochItems) and getattr(dataset.dataset, "transform", False) is None
    # an image cache is read here; items that need no transform (a linear probe's features) need no workers
    workers = 0 if cached or ready else loader_workers(num_workers, target)
    workers = min(workers, math.ceil(len(sampler) / batch_size))
    kwargs: dict[str, Any] = dict(batch_size=batch_size, sampler=sampler, num_workers=workers, generator=generator,
                                  drop_last=drop_last, pin_memory=target.type == "cuda" and not cached)
    if workers:
        kwargs.update(persistent_workers=True, prefetch_factor=PREFETCH_FACTOR)
    if finished:
        return BatchLoader(dataset, collate_fn=_as_is if cached else None, **kwargs)
    return MonaiDataLoader(dataset, **kwargs)


def prepare_batch(batchdata: Mapping[str, Any], device: Any = None, non_blocking: bool = False,
                  **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """MONAI's default ``prepare_batch`` returning plain tensors.

    The images arrive as MONAI ``MetaTensor``s; the network needs none of their
    metadata, and plain tensors avoid a metadata-tracking call on every layer
    (several times faster on a CPU).
    """
    from monai.data import MetaTensor
    from monai.engines.utils import default_prepare_batch

    image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    if isinstance(label, MetaTensor):
        label = label.as_tensor()
    return image, label
