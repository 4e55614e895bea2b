"""The whole run: training images per second of wall time, validation and checkpoints included, and what that
means for the study's Table 5 protocol on this device.

:func:`whole_run` trains the bundle for a few epochs exactly as ``cxrkit run
training`` does (80/20 split without a held-out test part, as in the study; image cache, validation every epoch, the best
model and the resume checkpoint saved every epoch) and times it with
:class:`EpochClock`. The first epoch (cuDNN autotuning, first allocations) is
reported apart; the whole-run figure is the later epochs' training images per
second of wall time. :func:`table5_estimate` scales the measured times to the
protocol of Hossain et al. (2022), Table 5: 10 weight sources x 50 epochs x
5,809 images, 80/20.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

__all__ = ["EpochClock", "whole_run", "table5_estimate", "TABLE5"]

logger = logging.getLogger(__name__)

#: the protocol of the study's Table 5.
TABLE5 = {"sources": 10, "epochs": 50, "images": 5809, "val_fraction": 0.2}


class EpochClock:
    """Ignite handler: wall-clock times of a run's start, each epoch's end and the run's end.

    Attach it after every other handler: an epoch ends when its validation and
    checkpoint handlers are done, the run when the last checkpoint is on disk.
    """

    def __init__(self) -> None:
        self.started: float | None = None
        self.epoch_ends: list[float] = []
        self.completed: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)
        engine.add_event_handler(Events.COMPLETED, self._done)

    def _start(self, engine: Engine) -> None:
        self.started = time.perf_counter()

    def _epoch(self, engine: Engine) -> None:
        self.epoch_ends.append(time.perf_counter())

    def _done(self, engine: Engine) -> None:
        self.completed = time.perf_counter()


def whole_run(bundle: Path, dataset_dir: Path, output_dir: Path, *, image_size: int, batch_size: int, epochs: int,
              device: str, step_images_per_s: float | None = None) -> dict[str, Any]:
    """Train ``epochs`` epochs (at least 2) through the bundle's training config and time them.

    Args:
        bundle: the bundle folder.
        dataset_dir: the dataset (radiography layout).
        output_dir: the run folder to write.
        image_size: network input size.
        batch_size: images per step.
        epochs: epochs to train; the first is reported apart.
        device: ``auto``, ``cpu`` or ``cuda``.
        step_images_per_s: the trainer's step throughput, for the ratio.

    Returns:
        Images, times, ``images_per_s`` (training images per second of wall time over epochs 2..N),
        ``over_step`` (that over ``step_images_per_s``) and the Table 5 estimate.

    Raises:
        ValueError: fewer than 2 epochs.
    """
    from cxrkit.bundle.runner import bundle_workflow

    if int(epochs) < 2:
        raise ValueError(f"the whole-run figure needs at least 2 epochs, got {epochs}")
    overrides = {
        "bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir),
        "image_size": int(image_size), "batch_size": int(batch_size), "epochs": int(epochs), "device": device,
        "val_fraction": TABLE5["val_fraction"], "test_fraction": 0.0, "near_duplicates": False, "cache": True,
        "allow_missing_weights": True, "tensorboard_images": 0,
    }
    began = time.perf_counter()
    workflow = bundle_workflow("training", bundle, overrides)
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    setup_s = time.perf_counter() - began
    fill_s = sum(float(getattr(getattr(parser.get_parsed_content(f"{part}#dataset"), "cache", None), "fill_s", 0.0))
                 for part in ("train", "validate"))
    clock = EpochClock()
    clock.attach(trainer)
    try:
        workflow.run()
    finally:
        workflow.finalize()
    data = parser.get_parsed_content("data")
    n_train, n_val = len(data.train), len(data.val)
    assert clock.started is not None and clock.completed is not None and clock.epoch_ends
    first_s = clock.epoch_ends[0] - clock.started
    later_s = clock.completed - clock.epoch_ends[0]
    later = len(clock.epoch_ends) - 1
    result: dict[str, Any] = {
        "epochs": len(clock.epoch_ends), "train_images": n_train, "val_images": n_val,
        "setup_s": round(setup_s, 3), "cache_fill_s": round(fill_s, 3), "first_epoch_s": round(first_s, 3),
        "epoch_s": round(later_s / later, 4),
        "images_per_s": round(n_train * later / later_s, 2) if later_s > 0 else float("inf"),
        "val_batch_size": int(parser.get_parsed_content("validate#dataloader").batch_size),
        "checkpoint_interval": int(parser.get_parsed_content("checkpoint_interval")),
    }
    if step_images_per_s:
        result["over_step"] = round(result["images_per_s"] / float(step_images_per_s), 4)
    result["table5_estimate_min"] = round(table5_estimate(result) / 60.0, 2)
    logger.info("whole run: %d epochs, %.1f training images per second of wall time (epochs 2-%d)",
                result["epochs"], result["images_per_s"], result["epochs"])
    return result


def table5_estimate(run: dict[str, Any]) -> float:
    """Seconds the Table 5 protocol would take on this device, from a :func:`whole_run` result.

    Per weight source: the run's fixed setup (network, data preparation) plus, scaled by
    ``5,809 / images measured``, the cache filling, the first epoch and 49 later epochs.
    """
    images = int(run["train_images"]) + int(run["val_images"])
    scale = TABLE5["images"] / images
    fixed = max(float(run["setup_s"]) - float(run["cache_fill_s"]), 0.0)
    scaled = float(run["cache_fill_s"]) + float(run["first_epoch_s"]) + (TABLE5["epochs"] - 1) * float(run["epoch_s"])
    return TABLE5["sources"] * (fixed + scale * scaled)
