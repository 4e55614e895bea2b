"""Training images as 8-bit grey tensors: decoded per epoch by loader workers, or held once in the image cache.

The training and validation loaders read items through the load-and-resize
part of the weight source's preprocessing (:meth:`cxrkit.data.transforms.CXRCompose.decode_part`)
and hand the rest to :class:`cxrkit.data.batchtransforms.BatchTransform`, per batch on the device:

* :class:`DecodedImages` decodes each item when it is asked for (in loader
  workers that live across epochs); an item is
  ``{"image": uint8 (1, S, S), "label", "index", "image_path"}`` plus its position and epoch;
* :class:`ImageCache` decodes every item once (``cache: true``), in parallel
  (loader workers over :class:`DecodedImages`, with a progress bar), into one
  ``(N, 1, S, S)`` uint8 tensor: 50 KB per 224 px image, so 15,000 images take
  0.75 GB. It lives on the GPU when it takes at most a quarter of the GPU's free
  memory (:func:`cache_placement`), else in pinned host memory (copied to the GPU
  without blocking), and in plain memory on a machine without CUDA;
* :class:`CachedImages` is the dataset over a cache: a batch is one gather from
  the cache, no per-item work at all.

Both give the same batches (the cache holds exactly what :class:`DecodedImages`
makes), so ``cache: true`` changes the speed of a run, never its result.
Unreadable images are found before training (:mod:`cxrkit.data.check`, with
``--skip_bad_images``); one that fails while the cache fills is reported by
name as a :class:`~cxrkit.data.errors.BadImageError`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from cxrkit.console import bar_disable
from cxrkit.data.batchtransforms import EPOCH_KEY, POSITION_KEY, to_uint8

__all__ = ["cache_placement", "ImageCache", "DecodedImages", "CachedImages", "GPU_SHARE", "fill_workers"]

logger = logging.getLogger(__name__)

#: the image cache goes on the GPU when it needs at most this share of the GPU's free memory.
GPU_SHARE = 0.25
_CHUNK = 32  # images per job while filling the cache


def cache_placement(nbytes: int, device: Any, free_bytes: int | None = None) -> str:
    """Where an image cache of ``nbytes`` lives for a run on ``device``: ``cuda``, ``pinned`` or ``cpu``.

    Args:
        nbytes: the cache's size.
        device: the run's device.
        free_bytes: the GPU's free memory (default: ``torch.cuda.mem_get_info``).

    Returns:
        ``cuda`` when the cache takes at most :data:`GPU_SHARE` of the free GPU memory (the rest stays for
        training), ``pinned`` (page-locked host memory) otherwise on a CUDA run, ``cpu`` without CUDA.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    if free_bytes is None:
        free_bytes, _ = torch.cuda.mem_get_info(device)
    return "cuda" if int(nbytes) <= GPU_SHARE * int(free_bytes) else "pinned"


def fill_workers(workers: int, count: int) -> int:
    """Processes filling a cache of ``count`` images: the loader's workers, or (none given) the CPU's cores
    for a cache big enough to be worth starting them (the cores have nothing else to do before training)."""
    if workers > 0:
        return workers
    return min(8, os.cpu_count() or 1) if count >= 512 and (os.cpu_count() or 1) > 1 else 0


def _key(key: Any) -> tuple[int, int]:
    """``(position, epoch)`` from an ``(index, epoch)`` pair or a plain index (epoch 1)."""
    if isinstance(key, (tuple, list)):
        return int(key[0]), int(key[1])
    return int(key), 1


class DecodedImages(Dataset):
    """Items decoded when asked for: the load-and-resize steps, then 8 bits.

    Args:
        items: ``{"image": path, "label": int, "index": int}`` dicts.
        decode: the load-and-resize transform (:meth:`~cxrkit.data.transforms.CXRCompose.decode_part`).
        batch_transform: what finishes a batch on the device (kept here for the loader).
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], decode: Callable, batch_transform: Any = None) -> None:
        self.items = [dict(item) for item in items]
        self.decode = decode
        self.batch_transform = batch_transform

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict[str, Any]:
        # loader workers decode on the CPU: the batch transform (device tensors) stays in the main process
        return {**self.__dict__, "batch_transform": None}

    def image(self, position: int) -> torch.Tensor:
        """The ``(1, S, S)`` uint8 image of the item at ``position``.

        Raises:
            cxrkit.data.BadImageError: the file cannot be read.
            ValueError: the decoded image is not one grey channel.
        """
        item = self.items[position]
        image = self.decode({"image": item["image"]})["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        if image.ndim != 3 or image.shape[0] != 1:
            raise ValueError(f"{item['image']}: expected one grey channel after decoding, got shape "
                             f"{tuple(image.shape)}")
        return to_uint8(image)

    def __getitem__(self, key: Any) -> dict[str, Any]:
        position, epoch = _key(key)
        item = self.items[position]
        out: dict[str, Any] = {"image": self.image(position), "index": int(item.get("index", position)),
                               "image_path": str(item["image"]), POSITION_KEY: position, EPOCH_KEY: epoch}
        if item.get("label") is not None:
            out["label"] = torch.tensor(int(item["label"]), dtype=torch.int64)
        return out


class _Filling(Dataset):
    """Cache filling: ``(position, uint8 image or None, (path, reason, bad image?) or None)`` per item."""

    def __init__(self, source: DecodedImages) -> None:
        self.source = DecodedImages(source.items, source.decode)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, position: int) -> tuple[int, torch.Tensor | None, tuple[str, str, bool] | None]:
        from cxrkit.data.errors import BadImageError

        try:
            return position, self.source.image(position), None
        except BadImageError as exc:
            return position, None, (exc.path, exc.reason, True)
        except Exception as exc:  # noqa: BLE001 - reported by name in the main process
            return position, None, (str(self.source.items[position]["image"]), f"{type(exc).__name__}: {exc}", False)


def _chunk(entries: list) -> list:
    return entries


class ImageCache:
    """Every item's 8-bit grey image, held once: ``images[position]`` is ``(1, S, S)`` uint8.

    Args:
        images: the ``(N, 1, S, S)`` uint8 tensor.
        placement: ``cuda``, ``pinned`` or ``cpu``.
        fill_s: seconds the filling took.
    """

    def __init__(self, images: torch.Tensor, placement: str, fill_s: float = 0.0) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"an image cache holds (N, 1, S, S) uint8 images, got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.placement = placement
        self.fill_s = float(fill_s)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.images.numel())

    @property
    def device(self) -> torch.device:
        return self.images.device

    def __repr__(self) -> str:
        return f"ImageCache({len(self)} images of {tuple(self.images.shape[2:])} px, {self.placement}, " \
               f"{self.nbytes / 2**20:.1f} MiB)"

    @classmethod
    def fill(cls, source: DecodedImages, device: Any = "cpu", workers: int = 0, progress: bool = True,
             free_bytes: int | None = None) -> "ImageCache":
        """Decode every item of ``source`` once into a new cache for a run on ``device``.

        Args:
            source: the items and their load-and-resize steps.
            device: the run's device (:func:`cache_placement` decides where the cache lives).
            workers: loader processes decoding in parallel (0: this process).
            progress: show a progress bar.
            free_bytes: the GPU's free memory (default: measured).

        Raises:
            cxrkit.data.BadImageError: an image cannot be read (named).
            ValueError: no items, or an image that is not one grey channel.
        """
        from tqdm.auto import tqdm

        from cxrkit.data.errors import BadImageError

        if not len(source):
            raise ValueError("the image cache needs at least one image")
        started = time.perf_counter()
        first = source.image(0)  # the size of every image (and an early, clear error)
        shape = (len(source), *first.shape)
        nbytes = int(torch.Size(shape).numel())
        placement = cache_placement(nbytes, device, free_bytes)
        images = _allocate(shape, placement, torch.device(device))
        placement = "cuda" if images.is_cuda else "pinned" if images.is_pinned() else "cpu"
        images[0] = first.to(images.device)
        workers = int(workers) if len(source) > 1 else 0
        loader = DataLoader(_Filling(source), batch_size=_CHUNK, num_workers=workers, collate_fn=_chunk,
                            sampler=range(1, len(source)), generator=torch.Generator())  # the global RNG untouched
        bar = tqdm(total=len(source), desc="caching images", unit="img", disable=bar_disable(progress), leave=False)
        bar.update(1)
        try:
            for entries in loader:
                for position, image, error in entries:
                    if error is not None:
                        path, reason, bad = error
                        if bad:
                            raise BadImageError(path, reason)
                        raise RuntimeError(f"caching {path} failed: {reason}")
                    images[position] = image.to(images.device, non_blocking=images.is_cuda)
                bar.update(len(entries))
        finally:
            bar.close()
        seconds = time.perf_counter() - started
        logger.info("image cache: %d images of %dx%d px, %.1f MiB in %s memory, filled in %.1fs with %d worker(s)",
                    len(source), shape[2], shape[3], nbytes / 2**20,
                    {"cuda": "GPU", "pinned": "pinned host", "cpu": "host"}[placement], seconds, workers)
        return cls(images, placement, seconds)

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """The ``(B, 1, S, S)`` images at ``positions``: on the GPU, or in pinned host memory for a
        non-blocking copy."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        if self.images.is_cuda:
            return self.images.index_select(0, positions.to(self.images.device, non_blocking=True))
        if self.placement == "pinned":
            out = torch.empty((len(positions), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
            return torch.index_select(self.images, 0, positions, out=out)
        return self.images.index_select(0, positions)


def _allocate(shape: tuple[int, ...], placement: str, device: torch.device) -> torch.Tensor:
    """An uninitialised uint8 tensor in ``placement`` memory (pinned memory that cannot be had: plain memory)."""
    if placement == "cuda":
        return torch.empty(shape, dtype=torch.uint8, device=device)
    if placement == "pinned":
        try:
            return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        except RuntimeError as exc:
            logger.warning("image cache: no pinned memory for %.1f MiB (%s); using plain host memory",
                           torch.Size(shape).numel() / 2**20, exc)
    return torch.empty(shape, dtype=torch.uint8)


class CachedImages(Dataset):
    """The items of an :class:`ImageCache`; a batch is one gather (``__getitems__``), finished on the device.

    Args:
        items: the items the cache was filled from, in the same order.
        cache: their images.
        batch_transform: what finishes a batch on the device (kept here for the loader).

    Raises:
        ValueError: items and cache differ in length.
    """

    def __init__(self, items: Sequence[Mapping[str, Any]], cache: ImageCache, batch_transform: Any = None) -> None:
        if len(items) != len(cache):
            raise ValueError(f"{len(items)} items but {len(cache)} cached images")
        self.cache = cache
        self.batch_transform = batch_transform
        self.paths = [str(item["image"]) for item in items]
        self.index = torch.tensor([int(item.get("index", i)) for i, item in enumerate(items)], dtype=torch.long)
        labelled = all(item.get("label") is not None for item in items)
        labels = torch.tensor([int(item["label"]) for item in items] if labelled else [], dtype=torch.long)
        self.labels = labels.to(cache.device) if labelled else None

    def __len__(self) -> int:
        return len(self.cache)

    def __getitems__(self, keys: Sequence[Any]) -> dict[str, Any]:
        pairs = [_key(k) for k in keys]
        positions = torch.tensor([p for p, _ in pairs], dtype=torch.long)
        batch: dict[str, Any] = {
            "image": self.cache.gather(positions),
            "index": self.index[positions],
            "image_path": [self.paths[p] for p, _ in pairs],
            POSITION_KEY: positions,
            EPOCH_KEY: torch.tensor([e for _, e in pairs], dtype=torch.long),
        }
        if self.labels is not None:
            batch["label"] = self.labels[positions.to(self.labels.device, non_blocking=True)]
        return batch

    def __getitem__(self, key: Any) -> dict[str, Any]:
        batch = self.__getitems__([key])
        return {k: v[0] for k, v in batch.items()}
