"""What the review page shows for one study: the image, the class probabilities and the Grad-CAM map.

* :func:`parse_infer` reads a MONAI Label classification answer
  (``{"prediction": [{"idx", "label", "score"}]}``, or ``probabilities`` as a
  mapping or a list beside ``classes``) and its optional Grad-CAM map (the
  answer's label image, as cxrkit's MONAI Label app sends it, or ``cam``: a 2D
  list in ``[0, 1]`` or a base64 PNG);
* :func:`render_png` turns any radiograph cxrkit reads (PNG, JPEG, DICOM incl.
  MONOCHROME1, NIfTI) into a grey PNG the browser can show;
* :func:`cam_overlay_png` colours a map into a transparent PNG laid over the image;
* :class:`LocalExplainer` computes the map with :mod:`cxrkit.serve` when the
  server does not return one.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Answer", "LocalExplainer", "cam_overlay_png", "parse_infer", "read_image_bytes", "render_png"]


@dataclass
class Answer:
    """The model's answer for one study.

    Attributes:
        classes: class names by output index.
        probabilities: one per class.
        cam: ``(rows, cols)`` map in ``[0, 1]`` when the server returned one.
        calibration: how the server calibrated the probabilities (``None``: as trained, or not said).
    """

    classes: list[str]
    probabilities: list[float]
    cam: np.ndarray | None = None
    calibration: str | None = None

    @property
    def index(self) -> int:
        """The predicted class index."""
        return int(np.argmax(self.probabilities))

    @property
    def label(self) -> str:
        """The predicted class."""
        return self.classes[self.index]

    @property
    def probability(self) -> float:
        """The predicted class's probability."""
        return float(self.probabilities[self.index])


def _cam_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _cam(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, Mapping):  # cxrkit's app describes the map here and sends it as the label image
        value = value.get("data", value.get("png"))
        if value is None:
            return None
    if isinstance(value, str):
        data = value.split(",", 1)[1] if value.startswith("data:") else value
        return _cam_png(base64.b64decode(data))
    arr = np.asarray(value, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"Grad-CAM map of shape {arr.shape}; expected (rows, columns)")
    return np.clip(arr, 0.0, 1.0)


def parse_infer(answer: Mapping[str, Any], model: str = "model", cam_png: bytes | None = None) -> Answer:
    """Read a classification infer answer.

    Args:
        answer: the result JSON of ``POST /infer/<model>``.
        model: the model name, for error messages.
        cam_png: the label image sent with the answer (cxrkit's app: the Grad-CAM map as an 8-bit grey PNG
            of the original image's size, 255 = strongest evidence).

    Returns:
        The :class:`Answer`.

    Raises:
        ValueError: no class probabilities in the answer.
    """
    classes: list[str] = []
    probs: list[float] = []
    pred = answer.get("prediction")
    if isinstance(pred, list) and pred and all(isinstance(p, Mapping) and "score" in p for p in pred):
        rows = sorted(pred, key=lambda p: int(p.get("idx", 0)))
        classes = [str(p.get("label", p.get("idx"))) for p in rows]
        probs = [float(p["score"]) for p in rows]
    else:
        given = answer.get("probabilities", answer.get("scores"))
        if isinstance(given, Mapping):
            classes, probs = [str(k) for k in given], [float(v) for v in given.values()]
        elif isinstance(given, Sequence) and isinstance(answer.get("classes"), Sequence):
            classes, probs = [str(c) for c in answer["classes"]], [float(v) for v in given]
    if len(classes) < 2 or len(classes) != len(probs):
        keys = ", ".join(sorted(answer)) or "nothing"
        raise ValueError(
            f"infer task {model!r} returned no class probabilities (got {keys}); serve a classification "
            "model (`cxrkit label serve RUN_DIR`) and pick it with --model"
        )
    cam = _cam_png(cam_png) if cam_png else _cam(answer.get("cam", answer.get("gradcam")))
    calibration = answer.get("calibration")
    text = calibration.get("text") if isinstance(calibration, Mapping) and calibration.get("calibrated") else None
    return Answer(classes=classes, probabilities=probs, cam=cam, calibration=text)


def read_image_bytes(data: bytes, suffix: str, name: str = "the study's image") -> np.ndarray:
    """Decode an image file's bytes with :func:`cxrkit.data.load_image` (``(rows, cols)`` in ``[0, 1]``).

    Args:
        data: the file's bytes.
        suffix: its extension (``.png``, ``.dcm``...), which picks the reader.
        name: how errors name the image (never the temporary file the bytes pass through).

    Raises:
        cxrkit.data.errors.BadImageError: the bytes are not a readable radiograph.
    """
    from cxrkit.data.errors import BadImageError
    from cxrkit.data.readers import load_image

    fd, tmp = tempfile.mkstemp(suffix=suffix or ".img", prefix="cxrkit-review-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return load_image(tmp)
    except BadImageError as exc:
        raise BadImageError(name, exc.reason.replace(tmp, name)) from None
    finally:
        os.unlink(tmp)


def render_png(image: np.ndarray, max_side: int = 1024) -> bytes:
    """A grey 8-bit PNG of a ``(rows, cols)`` image in ``[0, 1]``, at most ``max_side`` pixels a side."""
    from PIL import Image

    img = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8), mode="L")
    if max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def cam_overlay_png(cam: np.ndarray, size: tuple[int, int] | None = None, alpha: float = 0.45) -> bytes:
    """An RGBA PNG of a map in ``[0, 1]`` coloured with ``jet``; weak evidence is more transparent.

    Args:
        cam: ``(rows, cols)`` map.
        size: ``(width, height)`` to resize to (the displayed image's size).
        alpha: opacity of the strongest evidence.
    """
    from matplotlib import colormaps
    from PIL import Image

    cam = np.clip(np.asarray(cam, dtype=np.float32), 0.0, 1.0)
    rgba = colormaps["jet"](cam)
    rgba[..., 3] = alpha * (0.25 + 0.75 * cam)
    img = Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA")
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class LocalExplainer:
    """Grad-CAM computed here by the run folder's :class:`cxrkit.serve.Predictor` (the server sent none).

    Args:
        run_dir: the trained run folder (``models/model.pt``).
        device: ``auto``, ``cpu`` or ``cuda``.

    Raises:
        cxrkit.serve.ModelLoadError: the folder is not a usable run folder.
    """

    def __init__(self, run_dir: str | os.PathLike, device: str = "cpu") -> None:
        from cxrkit.serve import Predictor

        self.run_dir = Path(run_dir)
        self.predictor = Predictor.load(run_dir, device=device)

    def __call__(self, data: bytes, suffix: str, class_index: int) -> np.ndarray:
        """The ``(rows, cols)`` map for class ``class_index`` of the image file ``data``."""
        fd, name = tempfile.mkstemp(suffix=suffix or ".img", prefix="cxrkit-review-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            image = self.predictor.prepare(name)
            return self.predictor.grad_cam(image, int(class_index), read_image_bytes(data, suffix).shape)
        finally:
            os.unlink(name)
