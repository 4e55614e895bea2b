"""The MONAI Label inference task serving one trained cxrkit bundle as a classification model.

:class:`CXRClassificationInfer` is a :class:`monailabel.tasks.infer.bundle.BundleInferTask`
(``type=InferType.CLASSIFICATION``, ``add_post_restore=False``, as MONAI Label's
endoscopy in-body classifier): the preprocessing, inferer and postprocessing
come from the bundle's ``configs/inference.yaml``, the class names from
``configs/metadata.json``. The probabilities and Grad-CAM come from
:class:`cxrkit.serve.Predictor` (``weights_only=True``, batch norms folded), the
predictor of ``cxrkit predict``, so MONAI Label and ``cxrkit predict`` answer alike.

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

from cxrkit import options
from cxrkit.data.classnames import check_class_names
from cxrkit.data.errors import find_bad_image_error
from cxrkit.runfolder import RunPaths
from cxrkit.serve.gradcam import CAMError
from cxrkit.serve.guard import redact_paths
from cxrkit.serve.model import class_names
from cxrkit.serve.predict import Predictor

__all__ = ["CXRClassificationInfer", "ImageInputError", "ResolveImaged", "RecordShaped"]

logger = logging.getLogger(__name__)

#: request key holding the original image's (rows, columns), and the one holding the Grad-CAM map.
SHAPE_KEY = "cxr_original_shape"
CAM_KEY = "cxr_cam"
CAM_LAYER_KEY = "cxr_cam_layer"


class ImageInputError(MONAILabelException):
    """The request cannot be used (an unreadable image, not a single radiograph, a bad parameter value);
    answered with HTTP 422."""

    def __init__(self, msg: str) -> None:
        super().__init__(MONAILabelError.INVALID_INPUT, msg)


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
        self._predictors: dict[str, tuple[Predictor, float]] = {}
        self._predictors_lock = threading.Lock()
        self._pre_lock = threading.Lock()
        meta_file = RunPaths.of(path).metadata
        # the names become review labels in the datastore: refuse a run folder holding names cxrkit never writes
        self.classes = check_class_names(class_names(json.loads(meta_file.read_text()), meta_file),
                                         f"{meta_file} (channel_def)")
        self.labels = {name: i for i, name in enumerate(self.classes)}  # keep the names' case
        self._config.pop("model_filename", None)  # the run's best model (models/model.pt) is what is served
        self._config.update({"cam": False})

    def info(self) -> Dict[str, Any]:
        """MONAI Label's model info plus the class order and the Grad-CAM option."""
        d = super().info()
        d["cxrkit"] = {"classes": list(self.classes), "bundle": os.path.basename(self.bundle_path),
                       "cam": "pass {\"cam\": true} in the request params for a Grad-CAM label image",
                       "calibration": self._calibration(), "queue": self._queue_stats()}
        return d

    def _queue_stats(self) -> Dict[str, Any]:
        """Per device: forward passes run, requests answered and waiting in the model's inference queue."""
        stats = {}
        for device, (predictor, _) in list(getattr(self, "_predictors", {}).items()):
            queue = predictor.queue
            if queue is not None:
                stats[device] = {"batches": queue.batches, "answered": queue.answered, "waiting": queue.waiting,
                                 "max_batch": queue.settings.max_batch, "max_queue": queue.settings.max_queue}
        return stats

    def _calibration(self) -> Dict[str, Any]:
        """Whether the scores are calibrated: the temperature the bundle's postprocessing applies."""
        from cxrkit.calibration import CalibrationError, read_calibration

        try:
            calibration = read_calibration(self.bundle_path)
        except CalibrationError as exc:
            logger.warning("%s", exc)
            calibration = None
        applied = "calibration_file" in self.bundle_config.config
        if calibration is None or not applied:
            return {"calibrated": False, "text": "probabilities as trained (not calibrated)"}
        return {"calibrated": True, "temperature": calibration.temperature, "fitted_on": calibration.fitted_on,
                "text": calibration.describe()}

    # -- the predictor of `cxrkit predict`: cxrkit's loader (weights_only=True), batch norms folded ---------
    def _predictor(self, device: str) -> Predictor:
        """The predictor on ``device``, reloaded when ``models/model.pt`` changes on disk."""
        model_file = self.get_path()
        stamp = os.stat(model_file).st_mtime if model_file else 0.0
        with self._predictors_lock:  # request threads arrive together: load once
            cached = self._predictors.get(device)
            if cached is None or cached[1] != stamp:
                if cached is not None:
                    cached[0].close()  # its inference worker answers what it holds, then stops
                cached = self._predictors[device] = (Predictor.load(self.bundle_path, device=device), stamp)
            return cached[0]

    def _get_network(self, device: str, data: Any) -> torch.nn.Module:
        return self._predictor(device).model.network

    # -- pre-processing: the bundle's, with clear errors ---------------------------------------------
    def pre_transforms(self, data: Any = None) -> Sequence[Callable]:
        with self._pre_lock:  # MONAI Label builds them from the config parser, which is not thread-safe
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
        """The predictor's probabilities of the preprocessed image (and its Grad-CAM map when asked)."""
        try:
            cam = options.flag(data.get("cam"), "cam")
        except ValueError as exc:
            raise ImageInputError(f"{exc} (request parameter)") from None
        predictor = self._predictor(device)
        image = data[self.input_key]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        if convert_to_batch:  # one image: batched with the other requests by the model's one inference worker
            data[self.output_label_key] = predictor.batch_queue().submit(image.float())
        else:
            data[self.output_label_key] = predictor.probabilities(image)
        if cam:
            cls = int(torch.as_tensor(data[self.output_label_key]).argmax())
            shape = data.get(SHAPE_KEY) or list(image.shape[-2:])
            try:
                data[CAM_KEY] = predictor.grad_cam(image, cls, shape)
            except CAMError as exc:
                reason = redact_paths(str(exc))
                raise ImageInputError(f"Grad-CAM is not available for this model: {reason}") from None
            data[CAM_LAYER_KEY] = predictor.explainer.target_layer
        return data

    def post_transforms(self, data: Any = None) -> Sequence[Callable]:
        """None: the predictor's probabilities already went through the bundle's postprocessing (softmax)."""
        return []

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
        result: Dict[str, Any] = {"prediction": prediction, "predicted": prediction[top],
                                  "calibration": self._calibration()}
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
