"""What the bundle configs call: options, device, datasets and seeded loaders, metric selection, inputs.

The bundle configs (``bundles/<plugin>/configs/*.yaml``) build the engines from
MONAI, Ignite and torch classes directly; this module holds the small steps
that need code (the data preparation is :mod:`cxrkit.engine.prepare`). Names
and arguments are part of the bundle format, so keep them stable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

__all__ = [
    "optional",
    "flag",
    "select_device",
    "configure_threads",
    "make_dataset",
    "make_loader",
    "pick_metrics",
    "metric_comparator",
    "list_images",
    "model_file",
    "prepare_batch",
    "amp_enabled",
    "amp_kwargs",
    "place_network",
    "IMAGE_SUFFIXES",
]

logger = logging.getLogger(__name__)

_NULLS = {"", "none", "null"}
#: file suffixes ``list_images`` treats as images (DICOM files may also have no suffix: pass them directly).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".nii", ".nii.gz")


def optional(value: Any) -> Any:
    """``None`` for ``None`` and the command-line spellings ``null``/``none``/``""``; otherwise ``value``."""
    if isinstance(value, str) and value.strip().lower() in _NULLS:
        return None
    return value


def flag(value: Any, name: str = "option") -> bool:
    """A boolean from a config or command-line value (``true``/``false``/``yes``/``no``/``1``/``0``/``null``).

    ``python -m monai.bundle`` passes ``--cache true`` as the string ``"true"``;
    this reads it (and ``--cache True``, ``--cache 1``) as ``True``.

    Raises:
        ValueError: not a boolean spelling.
    """
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"true", "yes", "on", "1"}:
        return True
    if text in {"false", "no", "off", "0", "", "none", "null"}:
        return False
    raise ValueError(f"--{name} must be true or false, got {value!r}")


def select_device(device: Any = "auto") -> torch.device:
    """The torch device for ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.

    Raises:
        ValueError: CUDA requested but not available, or an unknown device string.
    """
    if isinstance(device, torch.device):
        chosen = device
    else:
        text = str(optional(device) or "auto").strip().lower()
        if text in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            # one GPU per process under torchrun
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        if text == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            chosen = torch.device(text)
        except RuntimeError as exc:
            raise ValueError(f"unknown --device {device!r}: use auto, cpu, cuda or cuda:N") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked for but CUDA is not available here; use --device cpu")
    return chosen


def configure_threads(num_threads: Any = None, num_workers: int = 0) -> int:
    """Set torch's CPU threads: ``num_threads``, or all cores less the data-loader workers.

    Returns:
        The number of threads set.
    """
    value = optional(num_threads)
    threads = int(value) if value else max(1, (os.cpu_count() or 1) - int(num_workers or 0))
    torch.set_num_threads(threads)
    return threads


def make_dataset(data: Sequence[Mapping[str, Any]], transform: Callable, cache: Any = False,
                 num_workers: int = 0) -> torch.utils.data.Dataset:
    """A MONAI ``Dataset``, or a ``CacheDataset`` (decoded, resized images kept in memory) when ``cache``.

    The cache holds each item's result up to the first random transform. When
    no random transform follows (no ``--augment``), cached items are handed out
    without MONAI's per-item deep copy (``copy_cache=False``): nothing after the
    cache can change them.
    """
    from monai.data import CacheDataset, Dataset
    from monai.transforms import Compose, Randomizable

    if flag(cache, "cache"):
        steps = transform.transforms if isinstance(transform, Compose) else (transform,)
        deterministic = not any(isinstance(t, Randomizable) for t in steps)
        return CacheDataset(list(data), transform=transform, num_workers=int(num_workers) or None, progress=False,
                            copy_cache=not deterministic)
    return Dataset(list(data), transform=transform)


def make_loader(dataset: torch.utils.data.Dataset, batch_size: int = 32, shuffle: bool = False, seed: int = 0,
                num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A MONAI ``DataLoader`` whose order depends only on ``(seed, epoch)`` (see :mod:`cxrkit.engine.resume`).

    A training loader drops a last batch of a single image (batch norm cannot
    train on one value). Under ``torchrun`` each process reads its shard
    (:class:`cxrkit.engine.distributed.ShardedEpochSampler`: padded for training,
    exact for validation). Batches are pinned for a GPU. Workers are not kept
    between epochs: a new epoch's workers are seeded from ``(seed, epoch)``.
    """
    from monai.data import DataLoader

    from cxrkit.engine.distributed import ShardedEpochSampler, world_size
    from cxrkit.engine.resume import EpochSeededSampler, epoch_seed

    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator()
    generator.manual_seed(epoch_seed(int(seed), 0, 1))
    if world_size() > 1:
        sampler: EpochSeededSampler = ShardedEpochSampler(dataset, seed=int(seed), shuffle=bool(shuffle),
                                                          pad=bool(shuffle))
    else:
        sampler = EpochSeededSampler(dataset, seed=int(seed), shuffle=bool(shuffle))
    drop_last = bool(shuffle) and len(sampler) > 1 and len(sampler) % batch_size == 1
    if drop_last:
        logger.info("dropping the last training batch of 1 image (batch norm needs 2)")
    workers = int(num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )


def amp_enabled(amp: Any, device: Any) -> bool:
    """Whether to train/infer with autocast: ``amp: auto`` means on a CUDA device; ``true`` needs CUDA.

    Raises:
        ValueError: ``amp: true`` on a CPU, or not ``auto``/``true``/``false``.
    """
    device = torch.device(device)
    if isinstance(amp, str) and amp.strip().lower() == "auto":
        return device.type == "cuda"
    on = flag(amp, "amp")
    if on and device.type != "cuda":
        raise ValueError("--amp true needs a CUDA device; use --amp auto (mixed precision on GPU only) or false")
    return on


def amp_kwargs(amp: Any, device: Any) -> dict[str, Any]:
    """``torch.autocast`` arguments: bfloat16 where the GPU supports it (no loss scaling needed), else float16."""
    if not amp_enabled(amp, device):
        return {}
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return {"dtype": torch.bfloat16 if bf16 else torch.float16}


def place_network(network: torch.nn.Module, device: Any, channels_last: Any = "auto") -> torch.nn.Module:
    """Move ``network`` to ``device``; ``channels_last`` memory format (``auto``: on CUDA, where it is faster)."""
    device = torch.device(device)
    network = network.to(device)
    text = str(channels_last).strip().lower()
    if (device.type == "cuda") if text == "auto" else flag(channels_last, "channels_last"):
        network = network.to(memory_format=torch.channels_last)
    return network


def pick_metrics(metrics: Mapping[str, Any], name: str, key: bool) -> dict[str, Any]:
    """Split ``metrics`` into the key metric ``{name: m}`` (``key=True``) or all the others.

    Raises:
        ValueError: ``name`` is not one of the metrics.
    """
    if name not in metrics:
        raise ValueError(f"--best_metric {name!r} is not a validation metric; choose one of {', '.join(metrics)}")
    return {name: metrics[name]} if key else {k: v for k, v in metrics.items() if k != name}


def metric_comparator(name: str) -> Callable[[float, float], bool]:
    """``cmp(current, best)``: True when ``current`` is better (lower for losses, else higher)."""
    from cxrkit.engine.handlers import lower_is_better

    if lower_is_better(name):
        return lambda current, best: current < best
    return lambda current, best: current > best


def list_images(path: Any) -> list[dict[str, Any]]:
    """``[{"image": file, "index": i}]`` for one image file or every image under a folder (sorted).

    Raises:
        ValueError: no ``--input``, a missing path, or a folder without images.
    """
    path = optional(path)
    if path is None:
        raise ValueError("no input given: pass --input FILE_OR_DIR")
    target = Path(str(path)).expanduser().resolve()
    if target.is_file():
        files = [target]
    elif target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise ValueError(f"--input {path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    else:
        raise ValueError(f"--input {path}: no such file or folder")
    return [{"image": str(f), "index": i} for i, f in enumerate(files)]


def model_file(bundle_root: Any) -> str:
    """``<bundle_root>/models/model.pt``, checked to exist.

    Raises:
        FileNotFoundError: no trained model there; the message says how to get one.
    """
    path = Path(str(bundle_root)).expanduser().resolve() / "models" / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this bundle holds no trained model. Train one "
            f"(cxrkit run training {bundle_root} --dataset_dir DIR) and evaluate or run inference on the run "
            "folder it writes (runs/<plugin>-<timestamp>), or pass --bundle_root RUN_DIR"
        )
    return str(path)


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
