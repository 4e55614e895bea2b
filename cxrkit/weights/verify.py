"""Verifying filtered weights against a backbone, tensor by tensor, and adapting input channels.

``load_state_dict(strict=False)`` followed by no check loads nothing and says
nothing, the classic silent failure with these checkpoints. Here every backbone
tensor must be present with its exact shape, and nothing unexpected may be left;
only ``num_batches_tracked`` buffers (absent from files saved before torch 0.4.1)
may be missing. The first convolution may differ between 1 and 3 input channels:
it is then adapted (summed over channels for 3 -> 1, repeated and divided by 3
for 1 -> 3), so a grey image gives the same response as its RGB copy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
import torch.nn as nn

__all__ = [
    "BackboneSpec",
    "Comparison",
    "backbone_spec",
    "spec_of",
    "adapt_conv_channels",
    "compare",
    "apply_adaptation",
    "resample_position_embedding",
    "describe",
    "OPTIONAL_SUFFIX",
]

#: Buffers a file may lack (the model keeps its own value).
OPTIONAL_SUFFIX = "num_batches_tracked"


@dataclass(frozen=True)
class BackboneSpec:
    """The state-dict contract of a backbone.

    Attributes:
        architecture: backbone registry name (or the module's class name).
        shapes: ``{key: shape}`` of every tensor in the backbone's state dict.
        first_conv: state-dict key of the first convolution's weight.
        pos_embed_prefix: for a ViT, the non-patch tokens in ``pos_embed`` (its grid is resampled
            when a file's differs); ``None`` for other backbones.
    """

    architecture: str
    shapes: dict[str, tuple[int, ...]]
    first_conv: str
    pos_embed_prefix: int | None = None

    @property
    def in_channels(self) -> int:
        return self.shapes[self.first_conv][1]

    @property
    def required(self) -> list[str]:
        return [k for k in self.shapes if not k.endswith(OPTIONAL_SUFFIX)]


def spec_of(model: nn.Module, architecture: str | None = None) -> BackboneSpec:
    """The :class:`BackboneSpec` of a built module."""
    first = next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; cannot load image weights into it")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    prefix = getattr(model, "pos_embed_prefix", None)
    return BackboneSpec(architecture or type(model).__name__, shapes, f"{first}.weight",
                        int(prefix) if prefix is not None and "pos_embed" in shapes else None)


@functools.lru_cache(maxsize=32)
def backbone_spec(architecture: str, in_channels: int = 3, image_size: int | None = None) -> BackboneSpec:
    """The spec of a registered backbone, built on the meta device (no memory, no init cost)."""
    from cxrkit.networks.backbones import build_backbone

    with torch.device("meta"):
        model = build_backbone(architecture, in_channels, image_size=image_size)
    return spec_of(model, architecture)


def _grid(tokens: int) -> int | None:
    side = int(round(tokens ** 0.5))
    return side if side > 0 and side * side == tokens else None


def resample_position_embedding(state: dict[str, torch.Tensor], spec: BackboneSpec) -> str | None:
    """Resample a ViT file's ``pos_embed`` to the backbone's grid in place; returns a note or ``None``.

    Bicubic interpolation with antialiasing of the patch positions, the class/register positions kept,
    exactly timm's ``resample_abs_pos_embed``. Nothing changes when the grids already agree, or when the
    shapes do not describe two square grids with the same prefix and width (the verification then
    reports the mismatch).
    """
    key = "pos_embed"
    if spec.pos_embed_prefix is None or key not in state or key not in spec.shapes:
        return None
    have, want = tuple(state[key].shape), spec.shapes[key]
    if have == want or len(have) != 3 or len(want) != 3 or have[0] != 1 or have[2] != want[2]:
        return None
    prefix = spec.pos_embed_prefix
    old, new = _grid(have[1] - prefix), _grid(want[1] - prefix)
    if old is None or new is None:
        return None
    from timm.layers import resample_abs_pos_embed

    value = state[key]
    state[key] = resample_abs_pos_embed(value.float(), new_size=[new, new], old_size=[old, old],
                                        num_prefix_tokens=prefix).to(value.dtype)
    return f"{key}: {old}x{old} -> {new}x{new} patch grid (bicubic, antialiased; timm resample_abs_pos_embed)"


def adapt_conv_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a convolution kernel ``(out, c, kh, kw)`` to ``in_channels`` inputs.

    Args:
        weight: the pretrained kernel with 1 or 3 input channels.
        in_channels: 1 or 3.

    Returns:
        The kernel itself when the channels already match; the sum over channels
        for 3 -> 1; the kernel repeated 3 times and divided by 3 for 1 -> 3.

    Raises:
        ValueError: any other combination.
    """
    have = weight.shape[1]
    if have == in_channels:
        return weight
    if have == 3 and in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if have == 1 and in_channels == 3:
        return weight.repeat(1, 3, 1, 1) / 3
    raise ValueError(f"cannot adapt a {have}-channel convolution to {in_channels} channels (only 1 <-> 3)")


@dataclass
class Comparison:
    """Result of comparing filtered weights with a :class:`BackboneSpec`.

    Attributes:
        matched: keys present with the right shape (after channel adaptation).
        missing: required backbone keys absent from the file.
        absent_optional: ``num_batches_tracked`` keys absent from the file.
        unexpected: file keys the backbone lacks.
        mismatched: ``(key, file shape, backbone shape)``.
        adapt: ``(key, from channels, to channels)`` when the first conv needs adapting.
    """

    matched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    absent_optional: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    adapt: tuple[str, int, int] | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)


def _shape(value: object) -> tuple:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else (type(value).__name__,)


def compare(state: dict[str, object], spec: BackboneSpec) -> Comparison:
    """Compare filtered weights with a backbone's spec, key by key and shape by shape."""
    out = Comparison()
    for key, want in spec.shapes.items():
        if key not in state:
            (out.absent_optional if key.endswith(OPTIONAL_SUFFIX) else out.missing).append(key)
            continue
        value = state[key]
        have = _shape(value)
        if have == want:
            out.matched.append(key)
        elif (
            key == spec.first_conv
            and len(have) == len(want) == 4
            and have[0] == want[0]
            and have[2:] == want[2:]
            and {have[1], want[1]} == {1, 3}
        ):
            out.matched.append(key)
            out.adapt = (key, have[1], want[1])
        else:
            out.mismatched.append((key, have, want))
    out.unexpected = [k for k in state if k not in spec.shapes]
    return out


def apply_adaptation(state: dict[str, torch.Tensor], comparison: Comparison) -> str | None:
    """Adapt the first convolution in place if ``comparison`` says so; returns a note or ``None``."""
    if comparison.adapt is None:
        return None
    key, have, want = comparison.adapt
    state[key] = adapt_conv_channels(state[key], want)
    how = "summed over channels" if want == 1 else "repeated over channels and divided by 3"
    return f"{key}: {have} -> {want} input channels ({how})"


def _fmt_shape(shape: tuple) -> str:
    return "x".join(map(str, shape)) if shape and isinstance(shape[0], int) else str(shape[0])


def describe(comparison: Comparison, first: int = 5) -> str:
    """Counts and the first few missing / unexpected / mismatched keys, for error messages."""
    parts = []
    for label, keys in (("missing", comparison.missing), ("unexpected", comparison.unexpected)):
        if keys:
            more = f", ... ({len(keys) - first} more)" if len(keys) > first else ""
            parts.append(f"{len(keys)} {label} ({', '.join(keys[:first])}{more})")
    if comparison.mismatched:
        shown = [f"{k}: file {_fmt_shape(h)}, backbone {_fmt_shape(w)}" for k, h, w in comparison.mismatched[:first]]
        more = f"; ... ({len(comparison.mismatched) - first} more)" if len(comparison.mismatched) > first else ""
        parts.append(f"{len(comparison.mismatched)} with the wrong shape ({'; '.join(shown)}{more})")
    return "; ".join(parts)
