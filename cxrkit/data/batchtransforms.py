"""The per-batch half of the training preprocessing, run where the batch is used (on the GPU in a GPU run).

Training and validation split :func:`cxrkit.data.transforms.build_transforms`
in two (:meth:`cxrkit.data.transforms.CXRCompose.decode_part`):

1. per image, on the CPU (in loader workers, or once into the image cache of
   :mod:`cxrkit.data.imagecache`): load, resize (and centre-crop), round to 8 bits
   (:class:`~cxrkit.data.transforms.EightBitd`), then held as :func:`to_uint8`: one grey
   channel of 8-bit values, 1/4 of a float32 image and 1/12 of the 3-channel
   float32 tensor the network reads;
2. per batch, here (:class:`BatchTransform`), on the device the batch goes to:
   back to ``[0, 1]`` floats, the random rotation (up to 10 degrees) and zoom
   (0.9-1.1) of ``augment`` as one ``affine_grid`` / ``grid_sample`` per batch (black
   padding, no flip, each with probability 0.5 as ``build_transforms`` draws them),
   the channel repeat and the intensity normalisation of the weight source
   (``(x - mean) / std`` per channel, or ``[0, 1]`` scaled to ``intensity_range``).

The random draws of an item depend only on ``(seed, epoch, item position)``: a
table of uniform numbers per epoch (a generator seeded from ``(seed, epoch)``)
read by the items' positions, so the same item gets the same rotation and zoom
whichever batch, process or resumed run asks for it. Without ``augment`` the
result is ``build_transforms``' own output (to float rounding): training,
validation, ``cxrkit run evaluate`` and every prediction path see the same
values. With ``augment`` the random draws differ from MONAI's per-item
``RandRotated`` / ``RandZoomd`` (same distribution; bilinear interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

__all__ = ["BatchSpec", "BatchTransform", "to_uint8", "POSITION_KEY", "EPOCH_KEY"]

#: batch entries that carry each item's dataset position and epoch to the :class:`BatchTransform` (removed there).
POSITION_KEY = "_position"
EPOCH_KEY = "_epoch"
_ROTATE, _ANGLE, _ZOOM, _SCALE = range(4)  # columns of the per-epoch table of uniform draws


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A ``[0, 1]`` float image as 8-bit values (``round(255 x)``, clipped; exact for ``k / 255`` levels)."""
    return (torch.as_tensor(image).float().clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)


@dataclass(frozen=True)
class BatchSpec:
    """The per-batch steps of a :func:`~cxrkit.data.transforms.build_transforms` chain.

    Attributes:
        channels: channels the network reads (1, or 3 = the grey channel repeated).
        mean: per-channel mean for ``(x - mean) / std`` on ``[0, 1]`` data (``None`` with ``intensity_range``).
        std: per-channel standard deviation.
        intensity_range: ``(low, high)``: scale ``[0, 1]`` to this range instead of mean/std.
        augment: random rotation and zoom.
        max_rotation_degrees: largest rotation.
        zoom: ``(smallest, largest)`` zoom factor.
        probability: chance of each random step.
    """

    channels: int
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    intensity_range: tuple[float, float] | None
    augment: bool = False
    max_rotation_degrees: float = 10.0
    zoom: tuple[float, float] = (0.9, 1.1)
    probability: float = 0.5


class BatchTransform:
    """Finish a batch of 8-bit grey images on ``device``: ``[0, 1]``, augmentation, channels, intensity.

    Args:
        spec: what to do (from the ``build_transforms`` chain).
        length: the dataset's number of items (size of the per-epoch table of random draws).
        seed: the run seed.
        device: where the batch is finished (and goes on to the network).
        channels_last: hand the images over in ``channels_last`` memory format (as the network is on a GPU).

    Raises:
        ValueError: 1 or 3 channels only; the mean/std length must match.
    """

    def __init__(self, spec: BatchSpec, length: int, seed: int = 0, device: Any = "cpu",
                 channels_last: bool = False) -> None:
        if spec.channels not in (1, 3):
            raise ValueError(f"in_channels must be 1 or 3, got {spec.channels}")
        self.spec = spec
        self.length = int(length)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        shape = (1, spec.channels, 1, 1)
        if spec.intensity_range is None:
            if spec.mean is None or spec.std is None or len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
                raise ValueError(f"mean and std need {spec.channels} value(s) each, got {spec.mean} and {spec.std}")
            self._mean = torch.tensor(spec.mean, dtype=torch.float32, device=self.device).view(shape)
            self._std = torch.tensor(spec.std, dtype=torch.float32, device=self.device).view(shape)
        self._table: tuple[int, torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"BatchTransform({self.spec}, device={self.device})"

    # -- random draws ---------------------------------------------------------------------------------------
    def draws(self, epoch: int) -> torch.Tensor:
        """The ``(length, 4)`` uniform draws of ``epoch`` (CPU; made once per epoch)."""
        from cxrkit.engine.resume import epoch_seed

        if self._table is None or self._table[0] != int(epoch):
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, int(epoch), 3))
            self._table = (int(epoch), torch.rand((max(self.length, 1), 4), generator=generator))
        return self._table[1]

    def affine(self, positions: torch.Tensor, epochs: torch.Tensor) -> torch.Tensor:
        """``(B, 2, 3)`` sampling matrices (output grid -> input) of the items at ``positions`` in ``epochs`` (CPU)."""
        spec = self.spec
        positions, epochs = positions.cpu().long(), epochs.cpu().long()
        if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= self.length):
            raise IndexError(f"item positions must be within 0..{self.length - 1}")
        rows = torch.empty((len(positions), 4))
        for epoch in torch.unique(epochs).tolist():
            chosen = epochs == epoch
            rows[chosen] = self.draws(int(epoch))[positions[chosen]]
        rotate = rows[:, _ROTATE] < spec.probability
        angle = torch.where(rotate, (2.0 * rows[:, _ANGLE] - 1.0) * math.radians(spec.max_rotation_degrees), 0.0)
        zoom_in = rows[:, _ZOOM] < spec.probability
        low, high = spec.zoom
        zoom = torch.where(zoom_in, low + (high - low) * rows[:, _SCALE], 1.0)
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        zero = torch.zeros_like(cos)
        return torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)

    # -- the batch ----------------------------------------------------------------------------------------------
    def images(self, images: torch.Tensor, positions: torch.Tensor | None = None,
               epochs: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1, H, W)`` uint8 -> ``(B, C, H, W)`` float32 network input on the device.

        Args:
            images: 8-bit grey images (any device; pinned CPU memory is copied without blocking).
            positions: the items' dataset positions (``augment`` needs them).
            epochs: their epochs (``augment`` needs them).

        Raises:
            ValueError: not a batch of 1-channel images, or ``augment`` without positions and epochs.
        """
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"expected (batch, 1, rows, columns) grey images, got shape {tuple(images.shape)}")
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if self.spec.augment:
            if positions is None or epochs is None:
                raise ValueError("augmentation needs each item's position and epoch")
            x = self._augment(x, torch.as_tensor(positions).reshape(-1), torch.as_tensor(epochs).reshape(-1))
        if self.spec.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        if self.spec.intensity_range is None:
            x = (x - self._mean) / self._std
        else:
            lo, hi = self.spec.intensity_range
            x = (x * (hi - lo) + lo).clamp_(lo, hi)
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x.contiguous()

    def _augment(self, x: torch.Tensor, positions: torch.Tensor, epochs: torch.Tensor) -> torch.Tensor:
        theta = self.affine(positions, epochs)  # decided on the CPU: no wait for the device
        moved = torch.nonzero(~torch.all(theta.flatten(1) == _IDENTITY, dim=1)).flatten()
        if not len(moved):
            return x
        chosen = moved.to(self.device, non_blocking=True)
        grid = F.affine_grid(theta[moved].to(self.device, non_blocking=True), [len(moved), *x.shape[1:]],
                             align_corners=False)
        x[chosen] = F.grid_sample(x[chosen], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return x

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch with ``image`` finished, ``label`` on the device and the position/epoch entries removed."""
        out = dict(batch)
        positions, epochs = out.pop(POSITION_KEY, None), out.pop(EPOCH_KEY, None)
        out["image"] = self.images(out["image"], positions, epochs)
        if isinstance(out.get("label"), torch.Tensor):
            out["label"] = out["label"].to(self.device, non_blocking=True)
        return out


_IDENTITY = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
