"""Class probabilities (and Grad-CAM overlays) for image files, from a trained model.

Typical use::

    from cxrkit.serve import load_model, predict_files

    model = load_model("runs/inat_swav-20240101-120000")
    result = predict_files(model, ["xray.png", "scans/"], cam_dir="cams")
    for p in result.predictions:
        print(p.file, p.label, p.probability)
    for f in result.failures:
        print("unreadable:", f.file, f.reason)

Files are read with the bundle's own preprocessing (PNG, JPEG, DICOM, NIfTI;
the format is recognised from the content). A file that cannot be read is
reported by name and skipped; the others are still predicted. Nothing from a
DICOM header reaches the results: files are named by the path the user gave.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from cxrkit.serve.model import LoadedModel

__all__ = ["Prediction", "PredictionFailure", "PredictionResult", "collect_inputs", "predict_files"]

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
    """

    model: str
    classes: list[str]
    predictions: list[Prediction] = field(default_factory=list)
    failures: list[PredictionFailure] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (what ``cxrkit predict --json`` prints)."""
        return {
            "model": self.model,
            "classes": list(self.classes),
            "predictions": [asdict(p) for p in self.predictions],
            "failures": [asdict(f) for f in self.failures],
        }


def _is_image_file(path: Path) -> bool:
    from cxrkit.data.readers import sniff_format_quiet
    from cxrkit.engine.workflow import IMAGE_SUFFIXES

    name = path.name.lower()
    if name.startswith("."):
        return False
    if name.endswith(IMAGE_SUFFIXES):
        return True
    return "." not in name and sniff_format_quiet(path) == "dicom"  # DICOM files often have no suffix


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> tuple[list[str], list[PredictionFailure]]:
    """Expand files and folders into the list of image files to predict.

    A folder contributes every image file under it (sorted; PNG, JPEG, BMP, TIFF,
    DICOM with or without ``.dcm``, NIfTI); other files in it are ignored. A
    file given by name is always tried, whatever its name.

    Args:
        inputs: files and folders.

    Returns:
        ``(files, failures)``: the files in order (duplicates removed), and a
        failure for each path that does not exist or folder without images.
    """
    files: list[str] = []
    failures: list[PredictionFailure] = []
    seen: set[str] = set()

    def add(name: str) -> None:
        key = os.path.realpath(name)
        if key not in seen:
            seen.add(key)
            files.append(name)

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and _is_image_file(p))
            if not found:
                failures.append(PredictionFailure(str(item), "folder without image files (PNG, JPEG, DICOM, NIfTI)"))
            for p in found:
                add(str(p))
        elif path.is_file():
            add(str(item))
        else:
            failures.append(PredictionFailure(str(item), "no such file or folder"))
    return files, failures


def _prepare(model: LoadedModel, file: str) -> torch.Tensor:
    """The preprocessed ``(C, H, W)`` tensor of ``file``; raises BadImageError for unreadable files."""
    from cxrkit.data.errors import BadImageError, find_bad_image_error

    try:
        item = model.preprocessing({"image": file})
    except BadImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - MONAI wraps decoder errors in RuntimeError
        bad = find_bad_image_error(exc)
        if bad is not None:
            raise bad from None
        raise BadImageError(file, f"cannot preprocess the image: {exc}") from exc
    image = item["image"]
    image = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
    return image.float()


def _cam_name(file: str, used: set[str]) -> str:
    stem = Path(file).name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name, n = f"{stem}_cam.png", 1
    while name in used:
        n += 1
        name = f"{stem}_{n}_cam.png"
    used.add(name)
    return name


def predict_files(
    model: LoadedModel,
    files: Sequence[str | os.PathLike],
    batch_size: int = 8,
    cam_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> PredictionResult:
    """Predict every file (folders are expanded) in batches, with optional Grad-CAM overlays.

    Args:
        model: from :func:`cxrkit.serve.load_model`.
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

    from cxrkit.data.errors import BadImageError
    from cxrkit.data.readers import load_image
    from cxrkit.serve.gradcam import GradCAMExplainer, cam_to_image, save_cam_overlay

    if int(batch_size) < 1:
        raise ValueError(f"--batch_size must be at least 1, got {batch_size}")
    paths, failures = collect_inputs(files)
    result = PredictionResult(model=str(model.model_file), classes=list(model.classes), failures=failures)
    explainer = GradCAMExplainer(model.network) if cam_dir is not None else None
    used_names: set[str] = set()
    bar = tqdm(total=len(paths), desc="predicting", unit="img", disable=not progress or not paths, leave=False)
    try:
        for start in range(0, len(paths), int(batch_size)):
            batch_files, tensors = [], []
            for file in paths[start : start + int(batch_size)]:
                try:
                    tensors.append(_prepare(model, file))
                    batch_files.append(file)
                except BadImageError as exc:
                    logger.warning("skipped %s: %s", file, exc.reason)
                    result.failures.append(PredictionFailure(file, exc.reason))
                    bar.update(1)
            if not tensors:
                continue
            images = torch.stack(tensors)
            probs = model.probabilities(images).numpy()
            winners = probs.argmax(axis=1)
            maps = explainer(images, winners.tolist()) if explainer is not None else None
            for i, file in enumerate(batch_files):
                k = int(winners[i])
                pred = Prediction(
                    file=file,
                    label=model.classes[k],
                    index=k,
                    probability=float(probs[i, k]),
                    probabilities={c: float(p) for c, p in zip(model.classes, probs[i])},
                )
                if maps is not None:
                    original = load_image(file)
                    overlay = cam_to_image(maps[i], model.preprocessing, original.shape)
                    target = Path(cam_dir) / _cam_name(file, used_names)
                    title = f"{Path(file).name}: {pred.label} (p = {pred.probability:.3f})"
                    pred.cam_file = str(save_cam_overlay(original, overlay, target, title))
                result.predictions.append(pred)
                bar.update(1)
    finally:
        bar.close()
    order = {f: i for i, f in enumerate(paths)}
    result.predictions.sort(key=lambda p: order[p.file])
    return result

