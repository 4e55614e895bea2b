"""Ignite handlers that write per-image predictions and evaluation metrics (CSV / JSON, atomically).

MONAI handler style: arguments checked in ``__init__``, events hooked in
``attach(engine)``, files written in ``__call__``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import CheckpointEvents

from cxrkit.atomic import atomic_write_csv, atomic_write_json
from cxrkit.engine.metrics import plain_value

__all__ = ["PredictionsWriter", "EvaluationWriter", "relative_paths"]

logger = logging.getLogger(__name__)


class PredictionsWriter:
    """Ignite handler (evaluator): writes one CSV row per image with the softmax probabilities.

    Columns: ``image`` (relative to ``root``), ``label`` (when the items have labels), ``pred``,
    ``pred_class``, ``prob_0`` ... ``prob_{K-1}``.

    Args:
        path: the CSV file.
        items: the evaluated data list (``image`` paths), in loader order; each batch
            item carries its position as ``index``.
        class_names: classes by index.
        root: dataset root the image paths are made relative to (``None``: as given).
        when: ``"completed"`` to write after each evaluation, ``"best"`` to write only when
            the :class:`BestModelCheckpoint` on the same engine saved a new best model.
        softmax: apply softmax to ``pred`` (``False`` when post-processing already did).
    """

    def __init__(self, path: str | Path, items: Sequence[Mapping[str, Any]], class_names: Sequence[str],
                 root: str | Path | None = None, when: str = "completed", softmax: bool = True) -> None:
        if when not in ("completed", "best"):
            raise ValueError(f"when must be 'completed' or 'best', got {when!r}")
        self.path = Path(path)
        self.items = list(items)
        self.classes = [str(c) for c in class_names]
        self.images = relative_paths([str(it["image"]) for it in self.items], root)
        self.when = when
        self.softmax = bool(softmax)
        self._rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        if self.when == "best":
            if not engine.has_registered_events(CheckpointEvents.SAVED_CHECKPOINT):
                engine.register_events(*CheckpointEvents)
            engine.add_event_handler(CheckpointEvents.SAVED_CHECKPOINT, self)
        else:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._rows = []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, list):  # decollated: one dict per item
            probs = torch.stack([torch.as_tensor(o["pred"]).detach().float().reshape(-1) for o in output])
            index = [_first(b["index"]) for b in batch]
            labels = [None if b.get("label") is None else _first(b["label"]) for b in batch]
        else:  # one batch dict: the whole batch at once (one copy from the GPU)
            probs = torch.as_tensor(output["pred"]).detach().float()
            index = torch.as_tensor(batch["index"]).reshape(-1).tolist()
            label = batch.get("label")
            labels = [None] * len(index) if label is None else torch.as_tensor(label).reshape(-1).tolist()
        probs = probs.cpu()
        if self.softmax:
            probs = torch.softmax(probs, dim=1)
        for row_probs, position, label in zip(probs.tolist(), index, labels):
            pred = max(range(len(row_probs)), key=row_probs.__getitem__)
            row: dict[str, Any] = {"image": self.images[int(position)], "label": "" if label is None else int(label),
                                   "pred": pred, "pred_class": self.classes[pred] if pred < len(self.classes) else str(pred)}
            row.update({f"prob_{k}": repr(float(p)) for k, p in enumerate(row_probs)})
            self._rows.append(row)

    def __call__(self, engine: Engine) -> None:
        labelled = any(row["label"] != "" for row in self._rows)
        fields = ["image"] + (["label"] if labelled else []) + ["pred", "pred_class"]
        fields += [f"prob_{k}" for k in range(len(self.classes))]
        atomic_write_csv(self.path, sorted(self._rows, key=lambda r: r["image"]), fields)
        logger.info("wrote %d predictions to %s", len(self._rows), self.path)


class EvaluationWriter:
    """Ignite handler (evaluator): writes the evaluation's metrics to a JSON file when it completes.

    Args:
        path: the JSON file.
        class_names: classes by index.
        positive_index: positive class of a binary task, or ``None``.
        info: extra entries for the file (model path, dataset...).
    """

    def __init__(self, path: str | Path, class_names: Sequence[str], positive_index: int | None = None,
                 info: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.classes = [str(c) for c in class_names]
        self.positive_index = positive_index
        self.info = dict(info or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        positive = self.classes[self.positive_index] if self.positive_index is not None else None
        n_images = len(engine.state.dataloader.dataset) if engine.state.dataloader is not None else None
        atomic_write_json(self.path, {
            "classes": self.classes,
            "positive_class": positive,
            "n_images": n_images,
            "metrics": {k: plain_value(v) for k, v in engine.state.metrics.items()},
            **self.info,
        })
        logger.info("wrote evaluation metrics to %s", self.path)


def _first(value: Any) -> int:
    """The integer in a number or a one-element tensor."""
    return int(torch.as_tensor(value).reshape(-1)[0])


def relative_paths(paths: Iterable[str], root: str | os.PathLike[str] | None) -> list[str]:
    """``paths`` relative to ``root`` (posix separators); unchanged when outside it or no root."""
    out = []
    base = Path(root).resolve() if root else None
    for p in paths:
        path = Path(p)
        if base is not None:
            try:
                out.append(path.resolve().relative_to(base).as_posix())
                continue
            except ValueError:
                pass
        out.append(str(p))
    return out
