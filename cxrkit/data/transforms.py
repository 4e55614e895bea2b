"""MONAI transforms from a datalist item to the tensor a weight source expects.

:func:`build_transforms` maps ``{"image": path, "label": int, ...}`` to
``{"image": float32 tensor (C, S, S), "label": int64 scalar tensor,
"image_path": path, ...}``. The chain is, in order:

1. ``LoadImaged`` with :class:`~cxrkit.data.readers.CXRImageReader` (any format,
   grey, ``[0, 1]``, channel first);
2. ``Resized`` to ``(S, S)`` (the source's ``interpolation``: area by default, as the study resized
   299 -> 224; bilinear or bicubic with antialiasing for the foundation models, as their processors),
   or to ``(resize, resize)`` then ``CenterSpatialCropd`` to ``(S, S)`` for
   weight sources trained with "resize 256, crop 224"; then :class:`EightBitd`:
   the grey levels rounded to 8 bits (``k / 255``), as the datasets' PNG and JPEG
   files store them (a 12-bit DICOM is read at 8-bit precision too), so that the
   8-bit image cache of training and every prediction path see the same values;
3. augmentation, only with ``train=True`` and ``augment=True``: a small random
   rotation (up to 10 degrees) and zoom (0.9-1.1), with black padding like the
   film's border. There is no left-right flip: chest X-rays are not mirror
   symmetric (heart, aortic arch, stomach bubble, side markers), and a flipped
   film is an anatomy the model never meets in practice;
4. ``RepeatChanneld`` to 3 channels when the weight source wants RGB;
5. intensity: ``NormalizeIntensityd`` with the source's per-channel ``mean``
   and ``std`` (on ``[0, 1]`` data), or ``ScaleIntensityRanged`` from ``[0, 1]``
   to the source's ``intensity_range`` (e.g. ``(-1024, 1024)``).

Steps 1-2 are deterministic and come before any random transform. The
returned :class:`CXRCompose` knows where they end and what steps 3-5 do
(:meth:`CXRCompose.decode_part`, :attr:`CXRCompose.batch_spec`): training and
validation run steps 1-2 per image (in loader workers, or once into the image
cache of :mod:`cxrkit.data.imagecache`) and steps 3-5 per batch on the
device (:class:`cxrkit.data.batchtransforms.BatchTransform`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import warnings
from typing import Any, Hashable, Mapping, Protocol, Sequence

import numpy as np
import torch
from monai.transforms import (
    CenterSpatialCropd,
    Compose,
    CopyItemsd,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    RandRotated,
    RandZoomd,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
    ToTensord,
)

from cxrkit.data.batchtransforms import BatchSpec
from cxrkit.data.errors import find_bad_image_error
from cxrkit.data.readers import CXRImageReader

__all__ = ["build_transforms", "InputSpec", "CXRCompose", "NoneToEmptyd", "EightBitd", "MAX_ROTATION_DEGREES"]

#: largest random rotation used by ``augment=True``.
MAX_ROTATION_DEGREES = 10.0


class InputSpec(Protocol):
    """What :func:`build_transforms` reads from a weight source (``cxrkit.weights.WeightSource``)."""

    in_channels: int
    mean: Sequence[float]
    std: Sequence[float]
    intensity_range: tuple[float, float] | None


class CXRCompose(Compose):
    """A :class:`monai.transforms.Compose` that lets a bad image's error through unwrapped.

    MONAI reports any failure inside a transform as ``RuntimeError("applying
    transform ...")``; when the cause is a
    :class:`~cxrkit.data.errors.BadImageError` that error (naming the file and
    the problem) is raised instead.

    Args:
        transforms: the steps.
        batch_spec: what the steps after the first ``decode_steps`` do (set by :func:`build_transforms`).
        decode_steps: how many leading steps load and resize the image (deterministic).
    """

    def __init__(self, transforms: Any = None, batch_spec: BatchSpec | None = None, decode_steps: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(transforms, **kwargs)
        self.batch_spec = batch_spec
        self.decode_steps = decode_steps

    def decode_part(self) -> "CXRCompose | None":
        """The leading load-and-resize steps (``None`` when this chain was not made by :func:`build_transforms`)."""
        if self.batch_spec is None or self.decode_steps is None:
            return None
        return CXRCompose(list(self.transforms[: self.decode_steps]))

    def __call__(self, input_, start=0, end=None, threading=False, lazy: bool | None = None):
        try:
            return super().__call__(input_, start=start, end=end, threading=threading, lazy=lazy)
        except RuntimeError as exc:
            bad = find_bad_image_error(exc)
            if bad is None:
                raise
            raise bad from None


class NoneToEmptyd(MapTransform):
    """Replace ``None`` values (e.g. an unknown ``patient_id``) by ``""`` so batches collate.

    Args:
        keys: keys to fix; missing keys are allowed.
    """

    def __init__(self, keys: Sequence[Hashable] = ("patient_id",)) -> None:
        super().__init__(keys, allow_missing_keys=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            if out[key] is None:
                out[key] = ""
        return out


class EightBitd(MapTransform):
    """Round ``[0, 1]`` grey levels to the 8-bit grid ``k / 255`` (values outside ``[0, 1]`` are clipped).

    Args:
        keys: the image keys.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image",)) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            out[key] = image.clamp(0.0, 1.0).mul(255.0).round().div(255.0) if isinstance(image, torch.Tensor) \
                else np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0
        return out


def _load_imaged() -> LoadImaged:
    """``LoadImaged`` with :class:`CXRImageReader`, quiet about MONAI's unused default readers.

    ``LoadImage`` instantiates every MONAI reader as a fallback; in MONAI 1.6 the
    nvImageCodec DICOM reader then warns on every machine without nvImageCodec.
    cxrkit never uses that reader, so the warning is silenced here only.
    """
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader", category=UserWarning)
            return LoadImaged(
                keys="image", reader=CXRImageReader(), image_only=True, ensure_channel_first=True, dtype=np.float32
            )
    finally:
        plugin_log.setLevel(level)


def _per_channel(values: Sequence[float] | float, channels: int, name: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if arr.size == 1:
        arr = np.repeat(arr, channels)
    if arr.size != channels:
        raise ValueError(
            f"the weight source's {name} has {arr.size} values for {channels} input channel(s); "
            f"give 1 or {channels}"
        )
    return arr


def build_transforms(
    spec: InputSpec, image_size: int, *, train: bool, augment: bool = False, resize: int | None = None
) -> Compose:
    """The preprocessing chain for one weight source.

    Args:
        spec: object with ``in_channels`` (1 or 3), ``mean`` and ``std`` (per-channel,
            for data in ``[0, 1]``), and ``intensity_range`` (``None`` to normalise
            with mean/std, or ``(lo, hi)`` to scale to that range without mean/std).
        image_size: side of the square output, e.g. 224.
        train: training pipeline (augmentation allowed) or evaluation pipeline.
        augment: add random rotation and zoom; only used with ``train=True``.
        resize: resize to this square size first, then centre-crop ``image_size``
            (``None`` resizes straight to ``image_size``).

    Returns:
        A cacheable :class:`monai.transforms.Compose` (a :class:`CXRCompose`).

    Raises:
        ValueError: bad sizes, channels or statistics.
    """
    channels = int(getattr(spec, "in_channels", 3))
    if channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {channels}")
    if int(image_size) < 8:
        raise ValueError(f"image_size must be at least 8, got {image_size}")
    if resize is not None and int(resize) < int(image_size):
        raise ValueError(f"resize ({resize}) must be at least image_size ({image_size})")
    size = (int(image_size),) * 2
    mode = str(getattr(spec, "interpolation", "area") or "area")
    if mode not in ("area", "bilinear", "bicubic"):
        raise ValueError(f"the weight source's interpolation must be area, bilinear or bicubic, got {mode!r}")
    # bilinear/bicubic as the sources' own pipelines resize (PIL): smoothed first when shrinking (antialiasing)
    resize_args = {"mode": mode} if mode == "area" else {"mode": mode, "anti_aliasing": True}

    steps: list = [
        CopyItemsd(keys="image", names="image_path"),
        _load_imaged(),
    ]
    if resize is None:
        steps.append(Resized(keys="image", spatial_size=size, **resize_args))
    else:
        steps += [
            Resized(keys="image", spatial_size=(int(resize),) * 2, **resize_args),
            CenterSpatialCropd(keys="image", roi_size=size),
        ]
    steps += [EightBitd(), NoneToEmptyd()]
    decode_steps = len(steps)
    if train and augment:
        angle = math.radians(MAX_ROTATION_DEGREES)
        steps += [
            RandRotated(keys="image", range_x=angle, prob=0.5, keep_size=True, padding_mode="zeros"),
            RandZoomd(keys="image", min_zoom=0.9, max_zoom=1.1, prob=0.5, keep_size=True, padding_mode="constant"),
        ]
    if channels == 3:
        steps.append(RepeatChanneld(keys="image", repeats=3))
    intensity_range = getattr(spec, "intensity_range", None)
    if intensity_range is None:
        mean = _per_channel(spec.mean, channels, "mean")
        std = _per_channel(spec.std, channels, "std")
        if np.any(std <= 0):
            raise ValueError(f"the weight source's std must be positive, got {tuple(std)}")
        steps.append(NormalizeIntensityd(keys="image", subtrahend=mean, divisor=std, channel_wise=True))
        batch = BatchSpec(channels, tuple(float(v) for v in mean), tuple(float(v) for v in std), None)
    else:
        lo, hi = (float(v) for v in intensity_range)
        if not hi > lo:
            raise ValueError(f"intensity_range must be (low, high) with low < high, got {intensity_range}")
        steps.append(ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=lo, b_max=hi, clip=True))
        batch = BatchSpec(channels, None, None, (lo, hi))
    steps.append(ToTensord(keys="image", dtype=torch.float32))
    steps.append(ToTensord(keys="label", dtype=torch.int64, track_meta=False, allow_missing_keys=True))
    batch = dataclasses.replace(batch, augment=bool(train and augment), max_rotation_degrees=MAX_ROTATION_DEGREES)
    return CXRCompose(steps, batch_spec=batch, decode_steps=decode_steps)
