"""Grad-CAM evidence maps for a classifier's answer, through :class:`monai.visualize.GradCAM`.

* :func:`cam_target_layer` picks the layer: the backbone's ``cam_layer`` when it
  names one (a Vision Transformer's patch tokens entering its last block, viewed
  as a grid: ``backbone.cam_grid``), else its last stage (``backbone.layer4`` for
  ResNets, ``backbone.features.norm5`` for DenseNets), from its ``stages``;
* :class:`GradCAMExplainer` computes maps for a batch, each for its own class;
* :func:`cam_to_image` maps a map from the network's input grid back onto the
  original image (undoing the preprocessing's resize and centre crop);
* :func:`save_cam_overlay` writes the overlay PNG a clinician looks at, with
  the predicted class and probability in its title.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["cam_target_layer", "GradCAMExplainer", "cam_to_image", "image_to_input", "save_cam_overlay", "CAMError"]


class CAMError(ValueError):
    """Grad-CAM cannot be computed for this network (no known target layer, a TorchScript module...)."""


def cam_target_layer(network: nn.Module) -> str:
    """The name of the layer Grad-CAM reads: the backbone's last stage.

    Args:
        network: a :class:`cxrkit.networks.classifier.CXRClassifier` (``backbone.stages``).

    Returns:
        e.g. ``"backbone.layer4"`` (ResNet) or ``"backbone.features.norm5"`` (DenseNet).

    Raises:
        CAMError: a TorchScript module, or a network without ``backbone.stages``.
    """
    if isinstance(network, torch.jit.ScriptModule):
        raise CAMError(
            "Grad-CAM needs the PyTorch model: a TorchScript module cannot be hooked. Pass the run folder "
            "(it holds models/model.pt) instead of the exported .ts file"
        )
    backbone = getattr(network, "backbone", None)
    cam_layer = getattr(backbone, "cam_layer", None)  # a ViT: its patch tokens viewed as a grid
    stages = (cam_layer,) if cam_layer else tuple(getattr(backbone, "stages", ()) or ())
    if not stages:
        raise CAMError(
            f"{type(network).__name__} has no backbone.stages; cannot choose the Grad-CAM layer "
            "(cxrkit classifiers declare the stages of their backbone)"
        )
    name = f"backbone.{stages[-1]}"
    try:
        network.get_submodule(name)
    except AttributeError:
        raise CAMError(f"{type(network).__name__}: the backbone's last stage {name!r} is not a submodule") from None
    return name


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    """Scale each map to ``[0, 1]`` with 1 = strongest evidence (all zeros when the map is flat).

    MONAI's ``default_normalizer`` maps (min, max) to (1, 0), flipping the map; this keeps the order.
    """
    flat = maps.reshape(len(maps), -1)
    low = flat.min(dim=1).values.reshape(-1, *[1] * (maps.ndim - 1))
    span = (flat.max(dim=1).values - flat.min(dim=1).values).reshape(-1, *[1] * (maps.ndim - 1))
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


class GradCAMExplainer:
    """Grad-CAM maps of a classifier, one per image, for the class asked for each image.

    MONAI's :class:`~monai.visualize.GradCAM` registers hooks on the network it
    wraps (and never removes them), so it wraps a private copy: the network
    used for prediction stays untouched.

    Args:
        network: the classifier (eval mode).
        target_layer: layer name; default :func:`cam_target_layer`.

    Raises:
        CAMError: no usable target layer.
    """

    def __init__(self, network: nn.Module, target_layer: str | None = None) -> None:
        from monai.visualize import GradCAM

        self.target_layer = target_layer or cam_target_layer(network)
        try:
            network.get_submodule(self.target_layer)
        except AttributeError:
            raise CAMError(f"{type(network).__name__} has no layer {self.target_layer!r}") from None
        self.network = copy.deepcopy(network).eval()
        for param in self.network.parameters():
            param.requires_grad_(True)  # frozen stages still pass gradients to the hooked layer
        self.cam = GradCAM(nn_module=self.network, target_layers=self.target_layer, postprocessing=_unit_range)

    def __call__(self, images: torch.Tensor, class_idx: Sequence[int]) -> np.ndarray:
        """Grad-CAM maps for ``images``.

        Args:
            images: ``(B, C, H, W)`` preprocessed images.
            class_idx: the class to explain for each image (usually the predicted one).

        Returns:
            ``(B, H, W)`` float32 maps in ``[0, 1]`` on the input grid (1 = strongest evidence).

        Raises:
            ValueError: ``class_idx`` does not have one entry per image.
        """
        if len(class_idx) != len(images):
            raise ValueError(f"{len(class_idx)} class indices for {len(images)} images")
        device = next(self.network.parameters()).device
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        out = np.zeros((len(images), *images.shape[-2:]), dtype=np.float32)
        wanted = np.asarray(class_idx, dtype=int)
        # MONAI scores one class index for the whole batch: run one batch per class
        for cls in np.unique(wanted):
            rows = np.flatnonzero(wanted == cls)
            x = images[torch.as_tensor(rows)].detach().to(device).float().requires_grad_(True)
            with torch.enable_grad():
                maps = self.cam(x, class_idx=int(cls))
            out[rows] = maps.detach().cpu().numpy()[:, 0]
        return out


def _geometry(preprocessing: Any) -> tuple[tuple[int, int] | None, bool]:
    """(size of the last resize, whether a centre crop follows it) in a MONAI transform chain."""
    from monai.transforms import CenterSpatialCropd, Compose, Resized

    transforms: Iterable[Any]
    if isinstance(preprocessing, Compose):
        transforms = preprocessing.flatten().transforms
    else:
        transforms = preprocessing or ()
    resized, cropped = None, False
    for t in transforms:
        if isinstance(t, Resized):
            resized, cropped = tuple(int(s) for s in np.atleast_1d(t.resizer.spatial_size)), False
        elif isinstance(t, CenterSpatialCropd):
            cropped = True
    if resized is not None and len(resized) == 1:
        resized = (resized[0], resized[0])
    return resized, cropped


def cam_to_image(cam: np.ndarray, preprocessing: Any, shape: Sequence[int]) -> np.ndarray:
    """Map a Grad-CAM map from the network's input grid onto the original image.

    The preprocessing resizes the whole image to the input size (or resizes,
    then crops the centre): the map is padded back to the resized frame (no
    evidence outside the crop) and resized to the original ``(rows, columns)``.

    Args:
        cam: ``(H, W)`` map on the network input grid.
        preprocessing: the transforms that made the input (a ``Compose`` or a sequence).
        shape: the original image's ``(rows, columns)``.

    Returns:
        ``(rows, columns)`` float32 map in ``[0, 1]``.
    """
    from monai.transforms import Resize, SpatialPad

    grid = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None]
    resized, cropped = _geometry(preprocessing)
    if cropped and resized is not None and tuple(grid.shape[1:]) != resized:
        grid = SpatialPad(spatial_size=resized, method="symmetric")(grid)
    rows, cols = (int(s) for s in shape[-2:])
    out = Resize(spatial_size=(rows, cols), mode="bilinear", align_corners=False)(grid)
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.clip(np.asarray(out[0], dtype=np.float32), 0.0, 1.0)


def image_to_input(array: np.ndarray, preprocessing: Any, input_shape: Sequence[int]) -> np.ndarray:
    """Map an array on the original image's grid onto the network's input grid (the inverse of :func:`cam_to_image`).

    The preprocessing's resize (and centre crop) is applied: e.g. a lung mask of
    the original image becomes the mask of the network's input.

    Args:
        array: ``(rows, columns)`` array on the original image's grid.
        preprocessing: the transforms that make the input (a ``Compose`` or a sequence).
        input_shape: the network input's ``(H, W)``.

    Returns:
        ``(H, W)`` float32 array (area interpolation: a boolean mask becomes the share of each input pixel).
    """
    from monai.transforms import CenterSpatialCrop, Resize

    grid = torch.as_tensor(np.asarray(array, dtype=np.float32))[None]
    target = tuple(int(s) for s in input_shape[-2:])
    resized, cropped = _geometry(preprocessing)
    out = Resize(spatial_size=resized or target, mode="area")(grid)
    if cropped and tuple(out.shape[1:]) != target:
        out = CenterSpatialCrop(roi_size=target)(out)
    if tuple(out.shape[1:]) != target:
        out = Resize(spatial_size=target, mode="area")(out)
    out = out.as_tensor() if hasattr(out, "as_tensor") else out
    return np.asarray(out[0], dtype=np.float32)


def save_cam_overlay(
    image: np.ndarray, cam: np.ndarray, path: str | os.PathLike, title: str, alpha: float = 0.4
) -> Path:
    """Write the radiograph with its Grad-CAM map laid over it as a PNG.

    Args:
        image: ``(rows, columns)`` grey image in ``[0, 1]`` (as :func:`cxrkit.data.load_image` reads it).
        cam: ``(rows, columns)`` map in ``[0, 1]`` (see :func:`cam_to_image`).
        path: the PNG to write (folders are created).
        title: the figure title (predicted class and probability); also stored as the PNG's ``Title``.
        alpha: opacity of the map.

    Returns:
        The path written.

    Raises:
        ValueError: image and map differ in shape.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    if image.shape != cam.shape:
        raise ValueError(f"image {image.shape} and Grad-CAM map {cam.shape} differ in shape")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows, cols = image.shape
    fig = Figure(figsize=(6.4, 5.6 * rows / cols + 0.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="lanczos")
    shown = ax.imshow(cam, cmap="jet", vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
    ax.set_axis_off()
    fig.colorbar(shown, ax=ax, shrink=0.8, label="Grad-CAM (evidence for the predicted class)")
    fig.suptitle(title, fontsize=11)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", metadata={"Title": title, "Software": "cxrkit"})
    os.replace(tmp, path)
    return path
