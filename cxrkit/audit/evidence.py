"""Where the evidence lies: the share of Grad-CAM energy inside the lung region.

For each image, Grad-CAM (:class:`cxrkit.serve.gradcam.GradCAMExplainer`, MONAI's
``GradCAM``) gives a map of the evidence for the predicted class, scaled to
``[0, 1]``. Its *lung share* is the map's sum inside the lung mask over its sum
everywhere. A map spread evenly would put exactly the lung region's *area share*
inside the lungs; a model that looks at the lungs puts more there, one that
reads markers, borders or the abdomen puts less.

Grad-CAM is as coarse as the layer it reads: the last stage of a ResNet is a
7 x 7 grid at 224 px, and 2 x 2 at 64 px. :func:`cam_layer` therefore takes the
deepest backbone stage whose grid is at least 7 x 7 at the run's input size.
Grad-CAM shows where the gradient of the class score flows, not what the model
"sees"; a map can be diffuse and still right. It is one piece of evidence, read
together with the occlusion probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["MIN_GRID", "cam_layer", "lung_shares", "EvidenceVerdict", "evidence_verdict", "compute_cams"]

#: the CAM layer's grid must be at least this many cells a side (when a stage offers it).
MIN_GRID = 7


def cam_layer(network: nn.Module, input_shape: Sequence[int]) -> tuple[str, tuple[int, int]]:
    """The deepest backbone stage whose output grid is at least ``MIN_GRID`` a side (else the finest one).

    Args:
        network: a cxrkit classifier (``backbone.stages``).
        input_shape: one input's ``(C, H, W)``.

    Returns:
        ``(layer name, its grid (h, w))``.

    Raises:
        cxrkit.serve.gradcam.CAMError: the network has no usable stages.
    """
    from cxrkit.serve.gradcam import cam_target_layer

    cam_target_layer(network)  # validates: a hookable cxrkit classifier
    stages = [f"backbone.{s}" for s in network.backbone.stages]
    sizes: dict[str, tuple[int, int]] = {}
    hooks = [network.get_submodule(name).register_forward_hook(
        lambda m, i, o, name=name: sizes.__setitem__(name, tuple(o.shape[-2:]))) for name in stages]
    try:
        device = next(network.parameters()).device
        was_training = network.training
        network.eval()
        with torch.no_grad():
            network(torch.zeros((1, *input_shape[-3:]), device=device))
        network.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    spatial = [(n, sizes[n]) for n in stages if n in sizes and len(sizes[n]) == 2]
    good = [(n, s) for n, s in spatial if min(s) >= MIN_GRID]
    if good:
        return good[-1]
    return max(spatial, key=lambda item: item[1][0] * item[1][1])


def compute_cams(network: nn.Module, images: torch.Tensor, classes: Sequence[int], layer: str, *,
                 batch_size: int = 8, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Grad-CAM maps (``(N, H, W)`` in ``[0, 1]``, input grid) for ``classes[i]`` of each image."""
    from cxrkit.serve.gradcam import GradCAMExplainer

    explainer = GradCAMExplainer(network, target_layer=layer)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        out.append(explainer(chunk, [int(c) for c in classes[start:start + batch_size]]))
        if progress is not None:
            progress(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[-2:]), np.float32)


def lung_shares(cams: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image, the map's energy inside the (soft) lung mask over its total (``nan`` for an empty map)."""
    cams = np.asarray(cams, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    total = cams.reshape(len(cams), -1).sum(1)
    inside = (cams * masks).reshape(len(cams), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


@dataclass(frozen=True)
class EvidenceVerdict:
    """What the Grad-CAM energy says.

    Attributes:
        flag: the median image puts less of its evidence inside the lungs than an even spread would.
        median_share: median lung share over the images.
        area_share: mean share of the image the lung region covers.
        text: the conclusion in plain words.
    """

    flag: bool
    median_share: float
    area_share: float
    text: str


def evidence_verdict(shares: np.ndarray, area_share: float, near_chance: bool = False) -> EvidenceVerdict:
    """Compare the median lung share with the lung region's area share.

    Args:
        shares: per-image lung shares (:func:`lung_shares`).
        area_share: the lung region's mean share of the image.
        near_chance: the model is near chance on these images: its evidence means little (never flagged).
    """
    valid = np.asarray(shares, dtype=float)
    valid = valid[np.isfinite(valid)]
    if valid.size == 0:
        return EvidenceVerdict(False, float("nan"), area_share,
                               "Inconclusive: Grad-CAM gave an empty map for every image.")
    median = float(np.median(valid))
    numbers = (f"median {median:.0%} of the Grad-CAM energy inside the lungs, which cover {area_share:.0%} of the "
               f"image; {np.mean(valid < area_share):.0%} of the images put less inside than an even spread would")
    if near_chance:
        return EvidenceVerdict(False, median, area_share, (
            f"Inconclusive: the model is near chance on these images, so where its evidence lies means little "
            f"({numbers})."))
    if median < area_share:
        return EvidenceVerdict(True, median, area_share, (
            f"SHORTCUT SUSPECTED: the evidence lies mostly OUTSIDE the lungs ({numbers})."))
    return EvidenceVerdict(False, median, area_share, f"The evidence concentrates in the lungs ({numbers}).")
