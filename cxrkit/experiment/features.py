"""Backbone features computed once per (weights, images, preprocessing, backbone) and cached on disk.

A linear probe trains only a head on the frozen backbone's pooled features, so
the backbone's forward pass is needed once per image, not once per epoch. The
features are stored as ``<cache_dir>/<key>.pt`` (a dict of tensors, read back
with ``torch.load(weights_only=True)``) next to ``<key>.json``, a sidecar with
every field of the key in plain text. The key is the sha256 of:

- the weight file's sha256 (a randomly initialised backbone: the sha256 of its tensors),
- the item list: every image path relative to the dataset root, with its size in bytes,
- the preprocessing: image size, channels, mean/std, intensity range,
- the backbone's architecture name and the feature format version.

Change any of them and the cache misses; nothing is ever reused silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from cxrkit.console import bar_disable

__all__ = [
    "FEATURE_FORMAT",
    "FEATURE_CACHE_ENV",
    "FeatureKey",
    "FeatureCache",
    "default_cache_dir",
    "items_digest",
    "tensors_digest",
    "extract_features",
]

logger = logging.getLogger(__name__)

#: bump when the stored layout or the way features are computed changes.
FEATURE_FORMAT = "cxrkit-features/2"  # 2: preprocessing rounds grey levels to 8 bits
#: environment variable overriding the default cache folder.
FEATURE_CACHE_ENV = "CXRKIT_FEATURE_CACHE"


def default_cache_dir() -> Path:
    """``$CXRKIT_FEATURE_CACHE`` or ``~/.cache/cxrkit/features``."""
    env = os.environ.get(FEATURE_CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxrkit" / "features"


def items_digest(images: Sequence[str], root: str | os.PathLike[str]) -> str:
    """sha256 of the image list: each path relative to ``root`` (posix) and its size in bytes, in order.

    Raises:
        FileNotFoundError: an image does not exist (named).
    """
    digest = hashlib.sha256()
    base = Path(root).resolve()
    for image in images:
        path = Path(image)
        try:
            rel = path.resolve().relative_to(base).as_posix()
        except ValueError:
            rel = str(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise FileNotFoundError(f"cannot read {path} for the feature cache key: {exc}") from exc
        digest.update(f"{rel}\t{size}\n".encode())
    return digest.hexdigest()


def tensors_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, shapes and values (identifies weights that have no file)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class FeatureKey:
    """Everything the cached features depend on.

    Attributes:
        weights_sha256: sha256 of the weight file (or of the random initial tensors).
        items_sha256: :func:`items_digest` of the images, in the stored order.
        n_items: number of images.
        architecture: backbone registry name (``resnet50``...).
        image_size: network input size in pixels.
        in_channels: input channels.
        mean: per-channel mean of the normalisation.
        std: per-channel standard deviation.
        intensity_range: ``(low, high)`` intensity scaling instead of mean/std, or ``None``.
        format: :data:`FEATURE_FORMAT`.
    """

    weights_sha256: str
    items_sha256: str
    n_items: int
    architecture: str
    image_size: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    intensity_range: tuple[float, float] | None
    format: str = FEATURE_FORMAT

    @classmethod
    def create(cls, *, weights_sha256: str, images: Sequence[str], root: str | os.PathLike[str], source: Any,
               image_size: int, in_channels: int | None = None) -> "FeatureKey":
        """The key for ``images`` seen through ``source``'s preprocessing at ``image_size``."""
        rng = getattr(source, "intensity_range", None)
        return cls(
            weights_sha256=str(weights_sha256),
            items_sha256=items_digest(images, root),
            n_items=len(images),
            architecture=str(source.architecture),
            image_size=int(image_size),
            in_channels=int(in_channels or source.in_channels),
            mean=tuple(float(v) for v in source.mean),
            std=tuple(float(v) for v in source.std),
            intensity_range=None if rng is None else (float(rng[0]), float(rng[1])),
        )

    def to_dict(self) -> dict[str, Any]:
        """The key as plain JSON data."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        data["intensity_range"] = None if self.intensity_range is None else list(self.intensity_range)
        return data

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of the key (the cache file name)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


class FeatureCache:
    """A folder of cached feature matrices, ``<digest>.pt`` with a ``<digest>.json`` sidecar.

    Args:
        root: the cache folder (default :func:`default_cache_dir`); created on first write.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def paths(self, key: FeatureKey) -> tuple[Path, Path]:
        """``(features file, sidecar)`` of ``key``."""
        return self.root / f"{key.digest}.pt", self.root / f"{key.digest}.json"

    def load(self, key: FeatureKey) -> torch.Tensor | None:
        """The cached ``(n_items, num_features)`` matrix for ``key``, or ``None`` on a miss.

        A file whose sidecar disagrees with the key, or that cannot be read or has the
        wrong shape, is treated as a miss (with a warning naming it) and recomputed.
        """
        data_path, meta_path = self.paths(key)
        if not data_path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            stored = torch.load(data_path, map_location="cpu", weights_only=True)
            features = stored["features"]
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is a cache miss, never an error
            logger.warning("feature cache %s is unreadable (%s); recomputing it", data_path, exc)
            return None
        if meta.get("key") != key.to_dict():
            logger.warning("feature cache sidecar %s does not match its key; recomputing", meta_path)
            return None
        if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] != key.n_items:
            logger.warning("feature cache %s holds %s, expected %d rows; recomputing", data_path,
                           getattr(features, "shape", type(features).__name__), key.n_items)
            return None
        return features

    def save(self, key: FeatureKey, features: torch.Tensor, images: Sequence[str]) -> Path:
        """Write ``features`` (and the sidecar) atomically; returns the features file."""
        from cxrkit.atomic import atomic_write_json

        data_path, meta_path = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
        torch.save({"features": features.detach().cpu().float().contiguous()}, tmp)
        os.replace(tmp, data_path)
        atomic_write_json(meta_path, {"key": key.to_dict(), "digest": key.digest,
                                      "shape": list(features.shape), "images": list(images)})
        return data_path


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, items: Sequence[Mapping[str, Any]], transform: Callable,
                     *, batch_size: int = 32, device: torch.device | str = "cpu", num_workers: int = 0,
                     progress: bool = True, desc: str = "features") -> torch.Tensor:
    """The backbone's pooled features of every item, in order, in evaluation mode.

    Args:
        backbone: maps ``(B, C, H, W)`` to ``(B, num_features)``.
        items: ``{"image": path, ...}`` dicts.
        transform: the evaluation preprocessing (:func:`cxrkit.data.transforms.build_transforms`).
        batch_size: images per forward pass.
        device: where the backbone runs.
        num_workers: data-loading processes.
        progress: show a tqdm progress bar.
        desc: progress bar label.

    Returns:
        A float32 CPU tensor ``(len(items), num_features)``.
    """
    from monai.data import DataLoader, Dataset
    from tqdm.auto import tqdm

    from cxrkit.engine.loaders import prepare_batch

    was_training = backbone.training
    backbone.eval()
    loader = DataLoader(Dataset([{"image": it["image"], "label": int(it.get("label", 0))} for it in items],
                                transform), batch_size=int(batch_size), shuffle=False, num_workers=int(num_workers))
    chunks = []
    try:
        for batch in tqdm(loader, desc=desc, unit="batch", disable=bar_disable(progress), leave=False):
            images, _ = prepare_batch(batch, device)
            chunks.append(backbone(images).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(chunks) if chunks else torch.zeros(0, getattr(backbone, "num_features", 0))
