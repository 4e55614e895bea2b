"""The review logic behind the page: studies, cached predictions, evidence images and saved reviews.

:class:`ReviewApp` holds no HTTP code (see :mod:`cxrkit.review.server`): it asks
MONAI Label for the datastore on every list (cheap, and other clients' reviews
show up), calls the infer task only when a study is opened (answers are cached
in memory per study), and saves reviews through the datastore API.
"""

from __future__ import annotations

import getpass
import io
import logging
import os
import threading
from collections import OrderedDict
from typing import Any

from PIL import Image

from cxrkit.review.client import LabelClient, ReviewError
from cxrkit.review.evidence import (
    Answer,
    LocalExplainer,
    cam_overlay_png,
    parse_infer,
    read_image_bytes,
    render_png,
)
from cxrkit.review.studies import REVIEW_TAG, Review, Study, encode_label_png, parse_studies, review_params

__all__ = ["ReviewApp", "default_reviewer"]

logger = logging.getLogger(__name__)


def default_reviewer() -> str:
    """``$USER`` (or the login name), else ``"unknown"``."""
    try:
        return os.environ.get("USER") or getpass.getuser() or "unknown"
    except OSError:
        return "unknown"


class _LRU:
    """A small thread-safe LRU cache of bytes or arrays."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            return None

    def put(self, key: Any, value: Any) -> Any:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


class ReviewApp:
    """Studies, predictions and reviews of one MONAI Label server.

    Args:
        client: the server.
        model: the classification infer task (default: the server's only / first classification model).
        reviewer: name saved with each review (default ``$USER``).
        run_dir: run folder of the served model, to compute Grad-CAM here when the server returns none.
        page_size: studies per list page.
        cache_size: studies whose image bytes are kept in memory.

    Raises:
        ReviewError: ``page_size`` below 1.
    """

    def __init__(
        self,
        client: LabelClient,
        model: str | None = None,
        reviewer: str | None = None,
        run_dir: str | os.PathLike | None = None,
        page_size: int = 50,
        cache_size: int = 32,
    ) -> None:
        if int(page_size) < 1:
            raise ReviewError(f"page size must be at least 1, got {page_size}")
        self.client = client
        self.reviewer = reviewer or default_reviewer()
        self.page_size = int(page_size)
        self.run_dir = run_dir
        self._model = model
        self._model_checked = False
        self._answers: dict[str, Answer] = {}
        self._images = _LRU(cache_size)
        self._explainer: LocalExplainer | None = None
        self._lock = threading.Lock()

    # -- model -------------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        """The infer task used, checked against ``GET /info/`` on first use."""
        if self._model_checked:
            return self._model
        models = self.client.info().get("models") or {}
        classifiers = [n for n, m in models.items() if str((m or {}).get("type", "")).lower() == "classification"]
        if self._model is None:
            if not classifiers:
                raise ReviewError(
                    f"{self.client.url} serves no classification model (models: {', '.join(models) or 'none'}); "
                    "start it with `cxrkit label serve RUN_DIR --studies DIR`"
                )
            self._model = classifiers[0]
        elif self._model not in models:
            raise ReviewError(
                f"--model {self._model!r} is not served by {self.client.url}; "
                f"it serves: {', '.join(models) or 'nothing'}"
            )
        self._model_checked = True
        return self._model

    @property
    def known_model(self) -> str | None:
        """The infer task once resolved (``None`` before the first prediction), without asking the server."""
        return self._model if self._model_checked else None

    # -- studies -----------------------------------------------------------------------------------
    def studies(self) -> list[Study]:
        """Every study of the datastore, sorted by id."""
        try:
            return parse_studies(self.client.datastore())
        except ValueError as exc:
            raise ReviewError(f"{self.client.url}/datastore/: {exc}") from None

    def study(self, study_id: str) -> tuple[Study, Study | None, Study | None]:
        """The study and its previous and next study in list order.

        Raises:
            KeyError: no such study.
        """
        studies = self.studies()
        for i, s in enumerate(studies):
            if s.id == study_id:
                return s, studies[i - 1] if i > 0 else None, studies[i + 1] if i + 1 < len(studies) else None
        raise KeyError(study_id)

    def is_predicted(self, study_id: str) -> bool:
        """Whether an answer for the study is cached."""
        return study_id in self._answers

    # -- evidence ----------------------------------------------------------------------------------
    def image_file(self, study: Study) -> bytes:
        """The study's image file bytes (cached)."""
        data = self._images.get(("file", study.id))
        return data if data is not None else self._images.put(("file", study.id), self.client.image(study.id))

    def image_png(self, study: Study) -> bytes:
        """The study rendered as a grey PNG (DICOM and NIfTI read with cxrkit's readers)."""
        png = self._images.get(("png", study.id))
        if png is None:
            image = read_image_bytes(self.image_file(study), study.ext, name=study.name or study.id)
            png = self._images.put(("png", study.id), render_png(image))
        return png

    def answer(self, study: Study) -> Answer:
        """The model's answer, from the cache or one infer call (asking for Grad-CAM too)."""
        cached = self._answers.get(study.id)
        if cached is not None:
            return cached
        model = self.model
        raw, label = self.client.infer(model, study.id, {"cam": True})
        try:
            answer = parse_infer(raw, model, cam_png=label)
        except ValueError as exc:
            raise ReviewError(str(exc)) from None
        with self._lock:
            return self._answers.setdefault(study.id, answer)

    def cam_png(self, study: Study) -> bytes | None:
        """The Grad-CAM overlay PNG (transparent, image-sized), or ``None`` when no map can be had."""
        answer = self.answer(study)
        cam = answer.cam
        if cam is None and self.run_dir is not None:
            with self._lock:
                if self._explainer is None:
                    self._explainer = LocalExplainer(self.run_dir)
            cam = self._explainer(self.image_file(study), study.ext, answer.index)
            answer.cam = cam
        if cam is None:
            return None
        with Image.open(io.BytesIO(self.image_png(study))) as img:
            size = img.size
        return cam_overlay_png(cam, size)

    # -- reviews -----------------------------------------------------------------------------------
    def save_review(self, study: Study, label_index: int) -> Review:
        """Save the clinician's class for a study as its ``final`` label.

        Args:
            study: the study.
            label_index: the chosen class index.

        Returns:
            The review as stored.

        Raises:
            ReviewError: the index is not a class of the model, or the server refuses the label.
        """
        answer = self.answer(study)
        if not 0 <= int(label_index) < len(answer.classes):
            raise ReviewError(f"class index {label_index} is not one of 0..{len(answer.classes) - 1}")
        label = answer.classes[int(label_index)]
        params = review_params(label, int(label_index), self.reviewer, self.model, answer.label, answer.probability)
        self.client.save_label(study.id, encode_label_png(int(label_index)), "label.png", params, tag=REVIEW_TAG)
        logger.info("review saved: %s (%s the prediction)", label, "kept" if label == answer.label else "corrected")
        return Review(label=label, label_index=int(label_index), reviewer=params["reviewer"],
                      reviewed_at=params["reviewed_at"], model=params["model"],
                      prediction=params["prediction"], probability=params["probability"])
