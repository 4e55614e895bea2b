"""Ignite handlers of a training run: metric history, best model, TensorBoard, progress, early stopping, sample ids.

The handlers that write prediction and evaluation files are in :mod:`cxrkit.engine.writers`.

MONAI handler style: arguments are checked in ``__init__``, events are hooked
in ``attach(engine)``, the work happens in ``__call__`` (or named methods).
Every stateful handler has ``state_dict``/``load_state_dict`` so
:class:`cxrkit.engine.resume.RunCheckpoint` can resume it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from ignite.handlers import EarlyStopping as IgniteEarlyStopping
from ignite.handlers import ProgressBar as IgniteProgressBar

from cxrkit import options
from cxrkit.atomic import atomic_write_csv, atomic_write_json
from cxrkit.engine.distributed import is_main, rank, world_size
from cxrkit.engine.metrics import metric_score, plain_value
from cxrkit.engine.resume import AtomicDiskSaver

__all__ = [
    "BestModelCheckpoint",
    "MetricsRecorder",
    "TensorBoardImages",
    "ProgressBar",
    "batch_length",
    "ValidationEarlyStopping",
    "SampleIdRecorder",
]

logger = logging.getLogger(__name__)


class BestModelCheckpoint(Checkpoint):
    """Ignite ``Checkpoint`` keeping the best model's ``state_dict`` as ``models/model.pt``.

    Attached to the evaluator; after each validation it saves the network when
    ``metric`` improved strictly (the first epoch reaching the best value wins).
    The file is written atomically and replaced, never deleted first.

    Args:
        save_dir: the run's ``models/`` folder.
        network: the model.
        metric: the evaluator metric deciding "best" (``val_accuracy``, ``val_auc``, ``val_loss``...).
        filename: file name of the best model.
        writer: a :class:`~cxrkit.engine.background.BackgroundWriter` to write the file on while training
            goes on (the run checkpoint's last save waits for it); ``None`` writes before returning.

    Attributes:
        best_epoch: epoch of the saved model (``None`` before the first save).
        best_value: its metric value.
    """

    def __init__(self, save_dir: str | Path, network: torch.nn.Module, metric: str = "val_accuracy",
                 filename: str = "model.pt", writer: Any = None) -> None:
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        self.metric = str(metric)
        super().__init__(
            {"model": network},
            AtomicDiskSaver(save_dir, keep=(filename,), writer=writer),
            filename_pattern=filename,
            score_function=self._score,
            score_name=self.metric,
            n_saved=1,
        )
        self.filename = filename
        self.best_epoch: int | None = None
        self.best_value: float | None = None

    def _score(self, engine: Engine) -> float:
        if self.metric not in engine.state.metrics:
            raise KeyError(
                f"best_metric {self.metric!r} is not computed by the evaluator; choose one of "
                f"{', '.join(k for k, v in engine.state.metrics.items() if isinstance(plain_value(v), float))}"
            )
        return metric_score(self.metric, engine.state.metrics[self.metric])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:  # type: ignore[override]
        before = list(self._saved)
        super().__call__(engine)
        if list(self._saved) != before:
            self.best_epoch = int(engine.state.epoch)
            self.best_value = float(plain_value(engine.state.metrics[self.metric]))
            logger.info("new best %s=%.4f at epoch %d: saved %s", self.metric, self.best_value, self.best_epoch,
                        self.filename)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(best_epoch=self.best_epoch, best_value=self.best_value)
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict({"_saved": state_dict["_saved"]})
        self.best_epoch, self.best_value = state_dict.get("best_epoch"), state_dict.get("best_value")


class MetricsRecorder:
    """Ignite handler (trainer): one row per epoch in ``metrics.json``, ``metrics.csv`` and TensorBoard.

    Row: ``epoch``, the trainer's metrics (``train_loss``, ``train_accuracy``), the
    evaluator's (``val_*``, when it ran this epoch), ``lr`` and ``time_s``. Attach
    it after the ``ValidationHandler``.

    Args:
        metrics_json: path of ``metrics.json``; ``metrics.csv`` is written beside it.
        evaluator: the validation engine.
        optimizer: to read the learning rate.
        class_names: the task's classes.
        best: the :class:`BestModelCheckpoint` (best metric and epoch).
        positive_index: positive class of a binary task, or ``None``.
        summary_writer: TensorBoard ``SummaryWriter`` for the epoch scalars (optional).
    """

    def __init__(
        self,
        metrics_json: str | Path,
        evaluator: Engine,
        optimizer: torch.optim.Optimizer,
        class_names: Sequence[str],
        best: BestModelCheckpoint,
        positive_index: int | None = None,
        summary_writer: Any = None,
    ) -> None:
        if not isinstance(best, BestModelCheckpoint):
            raise TypeError("best must be the BestModelCheckpoint attached to the evaluator")
        self.path = Path(metrics_json)
        self.evaluator = evaluator
        self.optimizer = optimizer
        self.classes = [str(c) for c in class_names]
        self.best = best
        self.positive_index = positive_index
        self.writer = summary_writer
        self.rows: list[dict[str, Any]] = []
        self._epoch_start = 0.0

    @property
    def best_metric(self) -> str:
        return self.best.metric

    @property
    def best_epoch(self) -> int | None:
        return self.best.best_epoch

    @property
    def best_value(self) -> float | None:
        return self.best.best_value

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_clock)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _start_clock(self, engine: Engine) -> None:
        self._epoch_start = time.time()

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        row: dict[str, Any] = {"epoch": epoch}
        row.update({k: plain_value(v) for k, v in engine.state.metrics.items()})
        if getattr(self.evaluator.state, "epoch", None) == epoch:
            row.update({k: plain_value(v) for k, v in self.evaluator.state.metrics.items()})
        row["lr"] = float(self.optimizer.param_groups[0]["lr"])
        row["time_s"] = round(time.time() - self._epoch_start, 3)
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        if not is_main():  # under torchrun, rank 0 writes the run folder (every rank keeps the rows)
            return
        self.write()
        if self.writer is not None:
            for name, value in row.items():
                if name != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{name}", value, epoch)
            self.writer.flush()

    def as_dict(self) -> dict[str, Any]:
        """The ``metrics.json`` content."""
        positive = self.classes[self.positive_index] if self.positive_index is not None else None
        return {
            "classes": self.classes,
            "positive_class": positive,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value,
            "epochs": self.rows,
        }

    def write(self) -> None:
        """Write ``metrics.json`` and ``metrics.csv`` atomically."""
        atomic_write_json(self.path, self.as_dict())
        fields: list[str] = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        atomic_write_csv(self.path.with_suffix(".csv"), self.rows, fields)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict["rows"]]


class TensorBoardImages:
    """Ignite handler (trainer): logs the first ``max_images`` input images of the run to TensorBoard.

    Batches that are not images (a linear probe's feature vectors) are not logged. Images are rescaled to [0, 1] per image for display (the network sees
    normalised values). Written once, at the first iteration.

    Args:
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter``.
        max_images: how many images (0 disables).
        tag: TensorBoard tag.
    """

    def __init__(self, summary_writer: Any, max_images: int = 8, tag: str = "train/inputs") -> None:
        if int(max_images) < 0:
            raise ValueError(f"max_images must be >= 0, got {max_images}")
        self.writer = summary_writer
        self.max_images = int(max_images)
        self.tag = tag

    def attach(self, engine: Engine) -> None:
        if self.max_images:
            engine.add_event_handler(Events.ITERATION_COMPLETED(once=1), self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        images = torch.stack([torch.as_tensor(b["image"]) for b in batch]) if isinstance(batch, list) else batch["image"]
        images = torch.as_tensor(images).detach().float().cpu()[: self.max_images]
        if images.ndim != 4:  # a linear probe trains on feature vectors: nothing to show
            logger.info("no input images for TensorBoard: the batches hold %s-dimensional inputs", images.ndim - 1)
            return
        flat = images.flatten(1)
        low, high = flat.min(1).values.view(-1, 1, 1, 1), flat.max(1).values.view(-1, 1, 1, 1)
        images = (images - low) / (high - low).clamp_min(1e-8)
        if images.shape[1] not in (1, 3):
            images = images[:, :1]
        self.writer.add_images(self.tag, images, engine.state.iteration, dataformats="NCHW")
        self.writer.flush()


class ProgressBar(IgniteProgressBar):
    """Ignite's tqdm ``ProgressBar``, one bar per epoch showing the running loss and images per second.

    Drawn on a terminal only (tqdm's ``disable=None``): in CI or through a pipe the console stays
    line-oriented. The bar is cleared at the epoch's end, where the epoch's line
    (:class:`cxrkit.engine.console.TrainingConsole`) takes its place.

    Args:
        output_transform: the engine output -> the loss shown.
        persist: keep each epoch's bar on screen.
        disable: ``None``: no bar unless standard error is a terminal; ``True``/``False`` forces it.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False,
                 disable: bool | None = None) -> None:
        super().__init__(persist=persist, disable=disable)
        self._output_transform = output_transform
        self._images = 0
        self._started = 0.0

    def attach(self, engine: Engine, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)  # before the bar reads the rate
        if not args and "output_transform" not in kwargs and self._output_transform is not None:
            kwargs["output_transform"] = self._postfix
        super().attach(engine, *args, **kwargs)

    def _start_epoch(self, engine: Engine) -> None:
        self._images, self._started = 0, time.perf_counter()

    def _count(self, engine: Engine) -> None:
        self._images += batch_length(engine.state.batch)

    def _postfix(self, output: Any) -> dict[str, float]:
        elapsed = time.perf_counter() - self._started
        shown = {"loss": float(self._output_transform(output))}  # type: ignore[misc]
        if elapsed > 0 and self._images:
            shown["img/s"] = round(self._images / elapsed, 1)
        return shown


def batch_length(batch: Any) -> int:
    """Images in a batch: a dict of stacked tensors (its ``image``), or a list of items."""
    if isinstance(batch, dict):
        value = batch.get("image", next(iter(batch.values()), None))
        shape = getattr(value, "shape", None)
        return int(shape[0]) if shape else (len(value) if isinstance(value, (list, tuple)) else 0)
    return len(batch) if isinstance(batch, (list, tuple)) else 0


class ValidationEarlyStopping:
    """Ignite ``EarlyStopping`` on a validation metric, attached to the trainer after validation.

    Args:
        evaluator: the validation engine.
        metric: the metric to watch (losses are minimised, everything else maximised).
        patience: epochs without improvement before stopping; ``None`` or 0 disables.
        min_delta: smallest change counted as an improvement.
    """

    def __init__(self, evaluator: Engine, metric: str = "val_accuracy", patience: int | None = None,
                 min_delta: float = 0.0) -> None:
        patience = options.integer(patience, "early_stopping_patience", minimum=0, allow_none=True)
        self.evaluator = evaluator
        self.metric = str(metric)
        self.patience = patience or None
        self.min_delta = float(min_delta)
        self._handler: IgniteEarlyStopping | None = None
        self._pending: Mapping[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        if self.patience is None:
            return
        self._handler = IgniteEarlyStopping(
            patience=self.patience,
            score_function=lambda _: metric_score(self.metric, self.evaluator.state.metrics.get(self.metric)),
            trainer=engine,
            threshold=self.min_delta,
        )
        if self._pending is not None:
            self._handler.load_state_dict(self._pending)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self._handler is not None and getattr(self.evaluator.state, "epoch", None) == engine.state.epoch:
            self._handler(engine)

    def state_dict(self) -> dict[str, Any]:
        if self._handler is None:
            return {}
        state = dict(self._handler.state_dict())
        if state.get("best_score") is not None:
            state["best_score"] = float(state["best_score"])
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not state_dict:
            return
        if self._handler is None:
            self._pending = dict(state_dict)
        else:
            self._handler.load_state_dict(state_dict)


class SampleIdRecorder:
    """Ignite handler (trainer), a debug aid: the dataset ``index`` of every sample each rank trained on.

    Writes ``<folder>/sample_ids_rank<r>.json`` (``{"rank", "world_size",
    "epochs": {"1": [ids...], ...}}``) at each epoch end, one file per rank (the
    one exception to "only rank 0 writes"). Off unless ``record_sample_ids``.

    Args:
        folder: where the files go (the run's ``debug/`` folder).
        enabled: record at all.
        key: the batch key holding the item ids.
    """

    def __init__(self, folder: str | Path, enabled: Any = False, key: str = "index") -> None:
        self.folder = Path(folder)
        self.enabled = options.flag(enabled, "record_sample_ids")
        self.key = key
        self.epochs: dict[str, list[int]] = {}

    @property
    def path(self) -> Path:
        return self.folder / f"sample_ids_rank{rank()}.json"

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.write)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        if isinstance(batch, list):
            ids = [int(torch.as_tensor(item[self.key]).reshape(-1)[0]) for item in batch]
        else:
            if self.key not in batch:
                raise KeyError(f"record_sample_ids: the training batches have no {self.key!r} entry")
            ids = [int(v) for v in torch.as_tensor(batch[self.key]).reshape(-1).tolist()]
        self.epochs.setdefault(str(engine.state.epoch), []).extend(ids)

    def write(self, engine: Engine) -> None:
        data = {"rank": rank(), "world_size": world_size(), "epochs": self.epochs}
        atomic_write_json(self.path, data)
