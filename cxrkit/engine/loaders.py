"""Datasets, seeded data loaders and batches: how prepared items reach the engines.

Bundle configs reach these through :mod:`cxrkit.engine.workflow`
(``cxrkit.engine.workflow.make_loader``...).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

import torch

from cxrkit import options
from cxrkit.engine.distributed import ShardedEpochSampler, world_size
from cxrkit.engine.resume import EpochSeededSampler, epoch_seed

__all__ = ["make_dataset", "make_loader", "prepare_batch"]

logger = logging.getLogger(__name__)


def make_dataset(data: Sequence[Mapping[str, Any]], transform: Callable | None, cache: Any = False,
                 num_workers: Any = 0) -> torch.utils.data.Dataset:
    """A MONAI ``Dataset``, or a ``CacheDataset`` (decoded, resized images kept in memory) when ``cache``.

    The cache holds each item's result up to the first random transform. When
    no random transform follows (no ``--augment``), cached items are handed out
    without MONAI's per-item deep copy (``copy_cache=False``): nothing after the
    cache can change them. Items that are ready already (cached backbone
    features) come with ``transform=None``.
    """
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose, Randomizable

    if options.flag(cache, "cache") and transform is not None:
        steps = transform.transforms if isinstance(transform, Compose) else (transform,)
        deterministic = not any(isinstance(t, Randomizable) for t in steps)
        workers = options.integer(num_workers or 0, "num_workers", minimum=0)
        return CacheDataset(list(data), transform=transform, num_workers=workers or None, progress=False,
                            copy_cache=not deterministic)
    return Dataset(list(data), transform=transform)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: Any = 32, shuffle: bool = False, seed: Any = 0,
                num_workers: Any = 0) -> torch.utils.data.DataLoader:
    """A MONAI ``DataLoader`` whose order depends only on ``(seed, epoch)`` (see :mod:`cxrkit.engine.resume`).

    A training loader drops a last batch of a single image (batch norm cannot
    train on one value). Under ``torchrun`` each process reads its shard
    (:class:`cxrkit.engine.distributed.ShardedEpochSampler`: padded for training,
    exact for validation). Batches are pinned for a GPU. Workers are not kept
    between epochs: a new epoch's workers are seeded from ``(seed, epoch)``.

    Raises:
        ValueError: ``batch_size`` below 1 or ``num_workers`` below 0.
    """
    from monai.data import DataLoader

    batch_size = options.integer(batch_size, "batch_size", minimum=1)
    seed = options.integer(seed, "seed")
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(seed, 0, 1))
    if world_size() > 1:
        sampler: EpochSeededSampler = ShardedEpochSampler(dataset, seed=seed, shuffle=bool(shuffle),
                                                          pad=bool(shuffle))
    else:
        sampler = EpochSeededSampler(dataset, seed=seed, shuffle=bool(shuffle))
    drop_last = bool(shuffle) and len(sampler) > 1 and len(sampler) % batch_size == 1
    if drop_last:
        logger.info("dropping the last training batch of 1 image (batch norm needs 2)")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=options.integer(num_workers or 0, "num_workers", minimum=0),
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


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
