"""The one predictor: class probabilities (and Grad-CAM evidence) for image files, from a trained model.

Typical use::

    from cxrkit.serve import Predictor

    predictor = Predictor.load("runs/inat_swav-20240101-120000")
    result = predictor.predict(["xray.png", "scans/"], cam_dir="cams")
    for p in result.predictions:
        print(p.file, p.label, p.probability)
    for f in result.failures:
        print("unreadable:", f.file, f.reason)

:class:`Predictor` is what ``cxrkit predict``, the MONAI Label infer task
(``cxrkit/label/app/lib/infers.py``) and the review page's Grad-CAM use: the
network and preprocessing of the run's ``configs/inference.yaml`` (batch norms
folded, as the bundle's inference config does), batched probabilities,
Grad-CAM mapped back onto the original image. Folders are expanded by
:func:`cxrkit.data.inputs.find_images` (DICOM without a suffix included), as
``cxrkit run inference --input DIR`` does. A file that cannot be read is
reported by name and skipped; the others are still predicted. Nothing from a
DICOM header reaches the results: files are named by the path the user gave.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from cxrkit.console import bar_disable
from cxrkit.serve.model import LoadedModel

__all__ = ["Predictor", "Prediction", "PredictionFailure", "PredictionResult", "collect_inputs", "predict_files"]

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """The model's answer for one file.

    Attributes:
        file: the file, as given (or as found under a given folder).
        label: the predicted class.
        index: its output index.
        probability: its probability.
        probabilities: every class's probability (sums to 1).
        cam_file: the Grad-CAM overlay PNG, when asked for.
    """

    file: str
    label: str
    index: int
    probability: float
    probabilities: dict[str, float]
    cam_file: str | None = None


@dataclass
class PredictionFailure:
    """A file that could not be predicted, and why."""

    file: str
    reason: str


@dataclass
class PredictionResult:
    """Predictions for every readable file and the reasons for the others.

    Attributes:
        model: the model file used.
        classes: class names by output index.
        predictions: in input order.
        failures: unreadable or missing files.
        calibration: how the probabilities were calibrated (``None``: as trained, uncalibrated).
    """

    model: str
    classes: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[PredictionFailure] = field(default_factory=list)
    calibration: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``cxrkit predict --json`` prints)."""
        return {
            "model": self.model,
            "classes": list(self.classes),
            "calibrated": self.calibration is not None,
            "calibration": self.calibration,
            "predictions": [asdict(p) for p in self.predictions],
            "failures": [asdict(f) for f in self.failures],
        }


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[PredictionFailure]]:
    """Files and folders -> ``(image files, failures)`` (:func:`cxrkit.data.inputs.find_images`)."""
    from cxrkit.data.inputs import find_images

    files, problems = find_images(inputs)
    return files, [PredictionFailure(item, reason) for item, reason in problems]


class Predictor:
    """Predict with a trained model: preprocessing, batched probabilities, Grad-CAM.

    Args:
        model: from :func:`cxrkit.serve.load_model` (batch norms already folded).

    Attributes:
        model: the :class:`~cxrkit.serve.model.LoadedModel`.
    """

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self._explainer: Any = None
        self._lock = threading.Lock()  # Grad-CAM keeps activations on the explainer: one map at a time
        self._queue: Any = None
        self._queue_lock = threading.Lock()

    @classmethod
    def load(cls, source: str | os.PathLike, device: str = "auto", trust: bool = False) -> "Predictor":
        """The predictor of a run folder, bundle folder or exported ``model.ts`` (see :func:`load_model`)."""
        from cxrkit.serve.model import load_model

        return cls(load_model(source, device=device, trust=trust))

    @property
    def classes(self) -> list[str]:
        """Class names by output index."""
        return list(self.model.classes)

    def prepare(self, file: str | os.PathLike) -> torch.Tensor:
        """The preprocessed ``(C, H, W)`` tensor of an image file.

        Raises:
            cxrkit.data.BadImageError: the file cannot be read as an image.
        """
        from cxrkit.data.errors import BadImageError, find_bad_image_error

        try:
            item = self.model.preprocessing({"image": str(file)})
        except BadImageError:
            raise
        except Exception as exc:  # noqa: BLE001 - MONAI wraps decoder errors in RuntimeError
            bad = find_bad_image_error(exc)
            if bad is not None:
                raise bad from None
            raise BadImageError(str(file), f"cannot preprocess the image: {exc}") from exc
        image = item["image"]
        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        return image.float()

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, num_classes)`` probabilities of preprocessed ``(B, C, H, W)`` images (CPU, rows sum to 1)."""
        images = images.as_tensor() if hasattr(images, "as_tensor") else images
        return self.model.probabilities(images)

    def batch_queue(self, settings: Any = None) -> Any:
        """The model's one inference worker (started on first use), for servers answering concurrent requests.

        Each request thread calls ``predictor.batch_queue().submit(image)`` with one preprocessed
        ``(C, H, W)`` image and gets its probabilities; the worker runs the waiting images as one batch
        (:class:`cxrkit.serve.batching.BatchQueue`).

        Args:
            settings: a :class:`~cxrkit.serve.batching.QueueSettings` for the first call (default: from
                ``$CXRKIT_INFER_*``).
        """
        from cxrkit.serve.batching import BatchQueue

        with self._queue_lock:
            if self._queue is None:
                self._queue = BatchQueue(self.probabilities, settings, name=Path(str(self.model.model_file)).name)
            return self._queue

    @property
    def queue(self) -> Any:
        """The inference worker's :class:`~cxrkit.serve.batching.BatchQueue` once started, else ``None``."""
        return self._queue

    def close(self) -> None:
        """Stop the inference worker, if one was started (a server replacing this predictor calls it)."""
        with self._queue_lock:
            if self._queue is not None:
                self._queue.close()
                self._queue = None

    def grad_cam(self, image: torch.Tensor, class_index: int, shape: Sequence[int]) -> np.ndarray:
        """The Grad-CAM map of one preprocessed ``(C, H, W)`` image for ``class_index``, on the original image.

        Args:
            image: the preprocessed image.
            class_index: the class whose evidence is shown (usually the predicted one).
            shape: the original image's ``(rows, columns)``.

        Returns:
            ``(rows, columns)`` float32 map in ``[0, 1]`` (1 = strongest evidence).

        Raises:
            cxrkit.serve.gradcam.CAMError: the network cannot be hooked (TorchScript).
        """
        from cxrkit.serve.gradcam import cam_to_image

        image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
        with self._lock:
            grid = self.explainer(image[None].float(), [int(class_index)])[0]
        return cam_to_image(grid, self.model.preprocessing, shape)

    @property
    def explainer(self) -> Any:
        """The :class:`~cxrkit.serve.gradcam.GradCAMExplainer` of the network (made on first use)."""
        if self._explainer is None:
            from cxrkit.serve.gradcam import GradCAMExplainer

            self._explainer = GradCAMExplainer(self.model.network)
        return self._explainer

    def predict(self, files: Sequence[str | os.PathLike], batch_size: int = 8,
                cam_dir: str | os.PathLike | None = None, progress: bool = True) -> PredictionResult:
        """Predict every file (folders are expanded) in batches, with optional Grad-CAM overlays.

        Args:
            files: image files and folders.
            batch_size: images per forward pass.
            cam_dir: write ``<name>_cam.png`` overlays here (``None``: no Grad-CAM).
            progress: show a tqdm progress bar.

        Returns:
            The :class:`PredictionResult`; unreadable files are in ``failures``, not raised.

        Raises:
            ValueError: ``batch_size`` below 1.
            cxrkit.serve.gradcam.CAMError: Grad-CAM asked of a model that cannot be hooked (TorchScript).
        """
        from tqdm.auto import tqdm

        from cxrkit import options
        from cxrkit.data.errors import BadImageError

        size = options.integer(batch_size, "batch_size", minimum=1)
        paths, failures = collect_inputs(files)
        calibration = self.model.calibration
        result = PredictionResult(model=str(self.model.model_file), classes=self.classes, failures=failures,
                                  calibration=calibration.describe() if calibration is not None else None)
        if cam_dir is not None:
            _ = self.explainer  # fail before any work when the network cannot be hooked
        used_names: set[str] = set()
        bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=bar_disable(progress and paths), leave=False)
        try:
            for start in range(0, len(paths), size):
                batch_files, tensors = [], []
                for file in paths[start : start + size]:
                    try:
                        tensors.append(self.prepare(file))
                        batch_files.append(file)
                    except BadImageError as exc:
                        logger.warning("skipped %s: %s", file, exc.reason)
                        result.failures.append(PredictionFailure(file, exc.reason))
                        bar.update(1)
                if not tensors:
                    continue
                images = torch.stack(tensors)
                probs = self.probabilities(images).numpy()
                for i, file in enumerate(batch_files):
                    k = int(probs[i].argmax())
                    pred = Prediction(file=file, label=self.classes[k], index=k, probability=float(probs[i, k]),
                                      probabilities={c: float(p) for c, p in zip(self.classes, probs[i])})
                    if cam_dir is not None:
                        pred.cam_file = str(self._overlay(file, images[i], pred, Path(cam_dir), used_names))
                    result.predictions.append(pred)
                    bar.update(1)
        finally:
            bar.close()
        order = {f: i for i, f in enumerate(paths)}
        result.predictions.sort(key=lambda p: order[p.file])
        return result

    def _overlay(self, file: str, image: torch.Tensor, pred: Prediction, cam_dir: Path, used: set[str]) -> Path:
        from cxrkit.data.inputs import image_stem
        from cxrkit.data.readers import load_image
        from cxrkit.serve.gradcam import save_cam_overlay

        original = load_image(file)
        overlay = self.grad_cam(image, pred.index, original.shape)
        stem = image_stem(Path(file).name)
        name, n = f"{stem}_cam.png", 1
        while name in used:
            n += 1
            name = f"{stem}_{n}_cam.png"
        used.add(name)
        title = f"{Path(file).name}: {pred.label} (p = {pred.probability:.3f})"
        return save_cam_overlay(original, overlay, cam_dir / name, title)


def predict_files(model: LoadedModel, files: Sequence[str | os.PathLike], batch_size: int = 8,
                  cam_dir: str | os.PathLike | None = None, progress: bool = True) -> PredictionResult:
    """:meth:`Predictor.predict` of ``model`` (a :class:`~cxrkit.serve.model.LoadedModel`)."""
    return Predictor(model).predict(files, batch_size=batch_size, cam_dir=cam_dir, progress=progress)
