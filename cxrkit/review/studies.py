"""Studies of a MONAI Label datastore and the reviews stored with them.

A review is a ``final`` label: a 1x1 8-bit PNG whose single pixel is the class
index (PNG is in the local datastore's default extensions, so the label is found
again even if the datastore's JSON index is rebuilt), plus the label info
(``params``) that MONAI Label keeps with it: class name and index, reviewer,
time, model, the model's prediction and probability. Nothing about the patient
is added.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

import numpy as np

__all__ = [
    "REVIEW_TAG",
    "Review",
    "Study",
    "decode_label_png",
    "encode_label_png",
    "parse_studies",
    "review_params",
]

#: the datastore label tag reviews are saved under (MONAI Label's ``DefaultLabelTag.FINAL``).
REVIEW_TAG = "final"

#: status of a study on the review page.
NOT_PREDICTED, PREDICTED, REVIEWED = "not yet predicted", "predicted", "reviewed"


@dataclass(frozen=True)
class Review:
    """A clinician's label for one study, as stored in the label info."""

    label: str
    label_index: int | None
    reviewer: str | None = None
    reviewed_at: str | None = None
    model: str | None = None
    prediction: str | None = None
    probability: float | None = None

    @property
    def problem(self) -> str | None:
        """Why the stored label cannot be used as a class name (anyone who can write to the datastore can store
        any text), or ``None``; see :mod:`cxrkit.data.classnames`."""
        from cxrkit.data.classnames import class_name_problem

        return class_name_problem(self.label)

    @property
    def agrees(self) -> bool | None:
        """Whether the reviewer kept the model's prediction (``None``: no prediction recorded)."""
        return None if self.prediction is None else self.prediction == self.label


@dataclass
class Study:
    """One image of the datastore.

    Attributes:
        id: the datastore image id.
        name: the image file name (``info.name``), e.g. ``COVID-1.png``.
        ext: the file extension the datastore keeps (``.png``, ``.dcm``...).
        review: the ``final`` label's review, if any.
        info: the image info as the datastore returns it.
    """

    id: str
    name: str
    ext: str
    review: Review | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def status(self, predicted: bool) -> str:
        """``reviewed``, ``predicted`` (an answer is cached) or ``not yet predicted``."""
        return REVIEWED if self.review is not None else PREDICTED if predicted else NOT_PREDICTED


def _review(label: Mapping[str, Any] | None) -> Review | None:
    if not label:
        return None
    info = label.get("info") or {}
    name = info.get("label")
    if not isinstance(name, str) or not name:
        return None  # a final label saved by another tool (e.g. a segmentation): not a review of ours
    index = info.get("label_index")
    prob = info.get("probability")
    return Review(
        label=name,
        label_index=int(index) if isinstance(index, (int, float)) else None,
        reviewer=info.get("reviewer"),
        reviewed_at=info.get("reviewed_at"),
        model=info.get("model"),
        prediction=info.get("prediction"),
        probability=float(prob) if isinstance(prob, (int, float)) else None,
    )


def parse_studies(datastore: Mapping[str, Any]) -> list[Study]:
    """The studies of a ``GET /datastore/?output=all`` answer, sorted by id (natural order).

    Args:
        datastore: the answer (``{"objects": {id: {"image": {...}, "labels": {tag: {...}}}}}``).

    Returns:
        One :class:`Study` per image.

    Raises:
        ValueError: the answer has no ``objects`` mapping.
    """
    from cxrkit.data.adapter import natural_key

    objects = datastore.get("objects") if isinstance(datastore, Mapping) else None
    if not isinstance(objects, Mapping):
        raise ValueError("the datastore answer has no 'objects'; is --server a MONAI Label server?")
    studies = []
    for image_id, obj in objects.items():
        image = (obj or {}).get("image") or {}
        info = dict(image.get("info") or {})
        ext = str(image.get("ext") or "")
        labels = (obj or {}).get("labels") or {}
        studies.append(Study(
            id=str(image_id), name=str(info.get("name") or f"{image_id}{ext}"), ext=ext,
            review=_review(labels.get(REVIEW_TAG)), info=info,
        ))
    return sorted(studies, key=lambda s: natural_key(s.id))


def review_params(
    label: str, label_index: int, reviewer: str, model: str | None,
    prediction: str | None, probability: float | None,
) -> dict[str, Any]:
    """The ``params`` saved with a review (the label info; no patient identifiers)."""
    return {
        "label": label,
        "label_index": int(label_index),
        "reviewer": reviewer,
        "reviewed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "prediction": prediction,
        "probability": None if probability is None else round(float(probability), 6),
    }


def encode_label_png(label_index: int) -> bytes:
    """A 1x1 8-bit grey PNG whose pixel is ``label_index``.

    Raises:
        ValueError: the index is outside 0..255.
    """
    from PIL import Image

    if not 0 <= int(label_index) <= 255:
        raise ValueError(f"class index {label_index} does not fit an 8-bit label (0..255)")
    buf = io.BytesIO()
    Image.fromarray(np.full((1, 1), int(label_index), dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def decode_label_png(data: bytes) -> int:
    """The class index stored by :func:`encode_label_png`."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return int(np.asarray(img.convert("L"))[0, 0])
