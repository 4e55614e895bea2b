"""The MONAI Label inference task serving one trained cxrkit bundle as a classification model.

:class:`CXRClassificationInfer` is a :class:`monailabel.tasks.infer.bundle.BundleInferTask`
(``type=InferType.CLASSIFICATION``, ``add_post_restore=False``, as MONAI Label's
endoscopy in-body classifier): the preprocessing, inferer and postprocessing
come from the bundle's ``configs/inference.yaml``, the class names from
``configs/metadata.json``. The network is loaded by
:func:`cxrkit.serve.load_model` (``weights_only=True``), so MONAI Label and
``cxrkit predict`` answer alike.

The answer is MONAI Label's classification JSON
(``{"prediction": [{"idx", "label", "score"}, ...]}``) plus ``predicted``
(the top class). With ``{"cam": true}`` in the request parameters the task also
computes Grad-CAM for the predicted class and returns it as the label image:
an 8-bit grey PNG of the original image's size (255 = strongest evidence).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Mapping, Sequence, Tuple

import numpy as np
import torch
from monai.transforms import CopyItemsd, LoadImaged, MapTransform
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.transform.pre import LoadImageTensord

from cxrkit.data.errors import find_bad_image_error
from cxrkit.serve.gradcam import CAMError, GradCAMExplainer, cam_to_image
from cxrkit.serve.guard import redact_paths
from cxrkit.serve.model import LoadedModel, class_names, load_model

__all__ = ["CXRClassificationInfer", "ImageInputError", "ResolveImaged", "RecordShaped"]

logger = logging.getLogger(__name__)

#: request key holding the original image's (rows, columns), and the one holding the Grad-CAM map.
SHAPE_KEY = "cxr_original_shape"
CAM_KEY = "cxr_cam"
CAM_LAYER_KEY = "cxr_cam_layer"


class ImageInputError(MONAILabelException):
    """The request's image cannot be used (unreadable, not a single radiograph); answered with HTTP 422."""

    def __init__(self, msg: str) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "yes", "on", "1"}
    return bool(value)


class ResolveImaged(MapTransform):
    """Point ``image`` at one file: a DICOMweb series folder of a radiograph holds exactly one instance.

    Raises:
        ImageInputError: a missing path, or a folder holding no file or several.
    """

    def __init__(self, keys: Sequence[Hashable] = ("image",)) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if not isinstance(value, (str, os.PathLike)):
                continue
            path = Path(value)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
                if len(files) != 1:
                    raise ImageInputError(
                        f"the image is a series of {len(files)} files; cxrkit classifies single radiographs "
                        "(one DX/CR instance per series)"
                    )
                d[key] = str(files[0])
            elif not path.is_file():
                raise ImageInputError("the image file does not exist on the server")
        return d


class RecordShaped(MapTransform):
    """Keep the loaded image's ``(rows, columns)`` under :data:`SHAPE_KEY` (to map Grad-CAM back onto it)."""

    def __init__(self, keys: Sequence[Hashable] = ("image",)) -> None:
        super().__init__(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[SHAPE_KEY] = [int(s) for s in d[key].shape[-2:]]
        return d


class CXRClassificationInfer(BundleInferTask):
    """Serve a trained cxrkit run folder (a MONAI bundle) as a MONAI Label classification model.

    Args:
        path: the run or bundle folder.
        conf: the app's ``--conf`` options.
        kwargs: passed to :class:`BundleInferTask`.
    """

    def __init__(self, path: str, conf: Dict[str, str], **kwargs: Any) -> None:
        kwargs.setdefault("pre_filter", [CopyItemsd])  # MONAI Label sets `image_path` itself
        super().__init__(
            path, conf, type=InferType.CLASSIFICATION, add_post_restore=False, load_strict=True, **kwargs
        )
        if not self.valid:
            return
        meta_file = Path(path) / "configs" / "metadata.json"
        self.classes = class_names(json.loads(meta_file.read_text()), meta_file)
        self.labels = {name: i for i, name in enumerate(self.classes)}  # keep the names' case
        self._models: dict[str, tuple[LoadedModel, float]] = {}
        self._explainers: dict[str, GradCAMExplainer] = {}
        self._preprocessing: Any = None
        self._cam_lock = threading.Lock()  # GradCAM keeps activations on the explainer: one map at a time
        self._config.pop("model_filename", None)  # the run's best model (models/model.pt) is what is served
        self._config.update({"cam": False})

    def info(self) -> Dict[str, Any]:
        """MONAI Label's model info plus the class order and the Grad-CAM option."""
        d = super().info()
        d["cxrkit"] = {"classes": list(self.classes), "bundle": os.path.basename(self.bundle_path),
                       "cam": "pass {\"cam\": true} in the request params for a Grad-CAM label image"}
        return d

    # -- network: cxrkit's loader, weights_only=True --------------------------------------------
    def _loaded(self, device: str) -> LoadedModel:
        """The model on ``device``, reloaded when ``models/model.pt`` changes on disk."""
        model_file = self.get_path()
        stamp = os.stat(model_file).st_mtime if model_file else 0.0
        cached = self._models.get(device)
        if cached is None or cached[1] != stamp:
            cached = self._models[device] = (load_model(self.bundle_path, device=device), stamp)
            self._explainers.pop(device, None)
        return cached[0]

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        return self._loaded(device).network

    # -- pre-processing: the bundle's, with clear errors ---------------------------------------------
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        pre = list(super().pre_transforms(data))
        out: list[Callable] = [ResolveImaged(keys=("image",))]
        for t in pre:
            out.append(t)
            if isinstance(t, (LoadImaged, LoadImageTensord)):
                out.append(RecordShaped(keys=("image",)))
        return out

    def run_pre_transforms(self, data: Dict[str, Any], transforms: Sequence[Callable]) -> Dict[str, Any]:
        try:
            return super().run_pre_transforms(data, transforms)
        except MONAILabelException:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder error is the image's fault
            bad = find_bad_image_error(exc)
            if bad is None:
                raise
            # the server's file name is a temporary or datastore path: report only the reason
            raise ImageInputError(f"the image cannot be read: {redact_paths(bad.reason)}") from exc

    # -- inference, and Grad-CAM when asked --------------------------------------------------------
    def run_inferer(self, data: Dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> Dict[str, Any]:
        data = super().run_inferer(data, convert_to_batch=convert_to_batch, device=device)
        if _flag(data.get("cam")):
            data[CAM_KEY] = self._grad_cam(data, device)
        return data

    def _grad_cam(self, data: Dict[str, Any], device: str) -> np.ndarray:
        loaded = self._loaded(device)
        image = data[self.input_key]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        cls = int(torch.as_tensor(data[self.output_label_key]).argmax())
        with self._cam_lock:
            explainer = self._explainers.get(device)
            if explainer is None:
                try:
                    explainer = self._explainers[device] = GradCAMExplainer(loaded.network)
                except CAMError as exc:
                    reason = redact_paths(str(exc))
                    raise ImageInputError(f"Grad-CAM is not available for this model: {reason}") from None
            cam = explainer(image[None].float(), [cls])[0]
            if self._preprocessing is None:
                self._preprocessing = self.bundle_config.get_parsed_content("preprocessing", instantiate=True)
        data[CAM_LAYER_KEY] = explainer.target_layer
        shape = data.get(SHAPE_KEY) or list(cam.shape)
        return cam_to_image(cam, self._preprocessing, shape)

    # -- the answer ----------------------------------------------------------------------------------
    def writer(self, data: Dict[str, Any], extension: Any = None, dtype: Any = None) -> Tuple[Any, Any]:
        scores = torch.as_tensor(data[self.output_label_key]).detach().float().cpu().reshape(-1)
        if scores.numel() != len(self.classes):
            raise MONAILabelException(
                MONAILabelError.INFERENCE_ERROR,
                f"the model returned {scores.numel()} scores for {len(self.classes)} classes",
            )
        prediction = [{"idx": i, "label": c, "score": float(s)} for i, (c, s) in enumerate(zip(self.classes, scores))]
        top = int(scores.argmax())
        result: Dict[str, Any] = {"prediction": prediction, "predicted": prediction[top]}
        cam = data.get(CAM_KEY)
        if cam is None:
            return None, result
        from PIL import Image

        pixels = np.round(np.clip(cam, 0.0, 1.0) * 255.0).astype(np.uint8)
        handle = tempfile.NamedTemporaryFile(suffix=".png", prefix="cxrkit_cam_", delete=False)
        handle.close()
        Image.fromarray(pixels).save(handle.name)
        result["cam"] = {
            "class": prediction[top]["label"],
            "layer": data.get(CAM_LAYER_KEY),
            "shape": list(pixels.shape),
            "format": "8-bit grey PNG, original image size, 255 = strongest evidence for the predicted class",
        }
        return handle.name, result
