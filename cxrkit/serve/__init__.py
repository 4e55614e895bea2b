"""Putting a trained model in front of clinicians: prediction, Grad-CAM evidence, TorchScript export.

* :func:`load_model` - a run folder, bundle or exported ``model.ts`` -> network + preprocessing + classes,
  built from the bundle's own ``configs/inference.yaml``;
* :class:`Predictor` - the one predictor (``cxrkit predict``, MONAI Label, the review page): class
  probabilities for PNG / JPEG / DICOM / NIfTI files, batched, with Grad-CAM; :func:`predict_files`;
* :func:`export_torchscript` - ``models/model.ts`` through MONAI's ``ckpt_export``, checked against ``model.pt``;
* :class:`GradCAMExplainer`, :func:`cam_to_image`, :func:`save_cam_overlay` - the evidence maps.

The MONAI Label app that serves run folders lives in :mod:`cxrkit.label`.
Heavy modules are imported on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "CAMError",
    "ExportError",
    "ExportResult",
    "GradCAMExplainer",
    "LoadedModel",
    "ModelLoadError",
    "Prediction",
    "PredictionFailure",
    "PredictionResult",
    "Predictor",
    "cam_target_layer",
    "cam_to_image",
    "collect_inputs",
    "export_torchscript",
    "load_model",
    "predict_files",
    "save_cam_overlay",
]

_LAZY = {
    "LoadedModel": "cxrkit.serve.model",
    "ModelLoadError": "cxrkit.serve.model",
    "load_model": "cxrkit.serve.model",
    "Prediction": "cxrkit.serve.predict",
    "PredictionFailure": "cxrkit.serve.predict",
    "PredictionResult": "cxrkit.serve.predict",
    "Predictor": "cxrkit.serve.predict",
    "collect_inputs": "cxrkit.serve.predict",
    "predict_files": "cxrkit.serve.predict",
    "CAMError": "cxrkit.serve.gradcam",
    "GradCAMExplainer": "cxrkit.serve.gradcam",
    "cam_target_layer": "cxrkit.serve.gradcam",
    "cam_to_image": "cxrkit.serve.gradcam",
    "save_cam_overlay": "cxrkit.serve.gradcam",
    "ExportError": "cxrkit.serve.export",
    "ExportResult": "cxrkit.serve.export",
    "export_torchscript": "cxrkit.serve.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cxrkit.serve' has no attribute {name!r}")
