"""After the last epoch: the best model on the held-out test part, and the optional temperature fit.

The best epoch is chosen on the validation part; its numbers are therefore
optimistic. :class:`HeldOutEvaluation` loads ``models/model.pt`` (the best model,
``torch.load(weights_only=True)``) and evaluates it ONCE on the test part that
took no part in training or model selection: ``test/predictions.csv`` and
``test/metrics.json`` in the run folder. Reports take their headline from it.

:class:`TemperatureFit` fits one temperature on the validation predictions
(``calibration.json``, see :mod:`cxrkit.calibration`) when ``--calibrate true``.

Both run after the trainer returns (``run_train.yaml``), so a failure here never
marks the training itself as failed: the run folder keeps its model and records,
and ``cxrkit run evaluate RUN --subset test --output_dir RUN/test`` or ``cxrkit
calibrate RUN`` redo the step.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from cxrkit.options import flag

__all__ = ["HeldOutEvaluation", "TemperatureFit", "calibrate_run", "ensure_temperature_step"]

logger = logging.getLogger(__name__)


class HeldOutEvaluation:
    """Evaluate the run's best model on the held-out test part (nothing when the split has none).

    Args:
        run_paths: the run folder (:class:`cxrkit.engine.record.RunPaths`).
        data: the prepared data (``test`` items, ``root``).
        network: the (unwrapped) network; the best weights are loaded into it.
        preprocessing: the evaluation transforms.
        classes: class names by index.
        positive_index: positive class of a binary task, or ``None``.
        device: where to evaluate (and where batches are finished, as in validation).
        batch_size: images per batch.
        num_workers: data-loading processes (``auto``: :func:`cxrkit.engine.hardware.loader_workers`).
        amp: autocast (as in validation).
        amp_kwargs: autocast arguments.
        seed: loader seed.
    """

    def __init__(self, run_paths: Any, data: Any, network: torch.nn.Module, preprocessing: Any,
                 classes: Sequence[str], positive_index: int | None = None, device: Any = "cpu", batch_size: int = 32,
                 num_workers: Any = 0, amp: bool = False, amp_kwargs: dict | None = None, seed: int = 0) -> None:
        self.paths = run_paths
        self.data = data
        self.network = network
        self.preprocessing = preprocessing
        self.classes = [str(c) for c in classes]
        self.positive_index = positive_index
        self.device = device
        self.batch_size = int(batch_size)
        self.num_workers = num_workers
        self.amp = bool(amp)
        self.amp_kwargs = dict(amp_kwargs or {})
        self.seed = int(seed)

    def run(self) -> dict[str, Any] | None:
        """Evaluate and write ``test/``; returns the metrics (``None`` when there is no test part or no model)."""
        from monai.engines import SupervisedEvaluator

        from cxrkit.engine import distributed, loaders, metrics
        from cxrkit.engine.writers import EvaluationWriter

        test = list(getattr(self.data, "test", []) or [])
        if not test:
            logger.warning("no held-out test part (--test_fraction 0, or a dataset too small for one): the run's "
                           "headline numbers come from the validation part that chose the model")
            return None
        if not self.paths.model.is_file():
            logger.warning("no best model at %s: the test part was not evaluated", self.paths.model)
            return None
        state = torch.load(str(self.paths.model), map_location="cpu", weights_only=True)
        self.network.load_state_dict(state)
        dataset = loaders.make_dataset(test, self.preprocessing, num_workers=self.num_workers, device=self.device,
                                       seed=self.seed)
        loader = loaders.make_loader(dataset, batch_size=self.batch_size, shuffle=False, seed=self.seed,
                                     num_workers=self.num_workers, device=self.device)
        found = distributed.shard_safe_metrics(metrics.classification_metrics(
            self.classes, prefix="", positive_index=self.positive_index, loss_function=torch.nn.CrossEntropyLoss()))
        handlers = [
            distributed.ShardedPredictionsWriter(self.paths.test_predictions, test, self.classes, root=self.data.root),
            distributed.on_main(EvaluationWriter(self.paths.test_metrics, self.classes, self.positive_index, info={
                "split": "test", "model": str(self.paths.model), "dataset": getattr(self.data, "dataset", None),
                "dataset_dir": self.data.root, "task": getattr(self.data, "task", None)})),
        ]
        evaluator = SupervisedEvaluator(
            device=self.device, val_data_loader=loader, network=self.network, prepare_batch=loaders.prepare_batch,
            key_val_metric=metrics.pick_metrics(found, "accuracy", True),
            additional_metrics=metrics.pick_metrics(found, "accuracy", False), val_handlers=handlers,
            amp=self.amp, amp_kwargs=self.amp_kwargs, decollate=False)
        evaluator.run()
        result = dict(evaluator.state.metrics)
        logger.info("held-out test part (%d images): accuracy %.4f", len(test), float(result.get("accuracy", 0.0)))
        return result


def calibrate_run(run_dir: Any) -> Any:
    """Fit a temperature on a run folder's validation predictions and write ``calibration.json``.

    An existing ``calibration.json`` that is not valid is replaced, and said so (a warning naming the file
    and what was wrong with it); every other record is checked as for any command (``split.json``...).

    Returns:
        The :class:`cxrkit.calibration.Calibration`.

    Raises:
        cxrkit.runfolder.RunFolderError: no usable ``predictions.csv``, or another record is not valid.
    """
    from pathlib import Path

    from cxrkit.calibration import CALIBRATION_FILE, Calibration
    from cxrkit.report.runfolder import load_run
    from cxrkit.runfolder import RunFolderError, RunPaths

    run = load_run(run_dir, calibration=False)
    try:
        RunPaths.of(run_dir).read_calibration()
    except RunFolderError as exc:
        logger.warning("replacing an invalid calibration file: %s", exc)
    calibration = Calibration.fit(run.y_true, run.y_prob, fitted_on="validation")
    calibration.save(Path(run_dir) / CALIBRATION_FILE)
    logger.info("%s (ECE on validation %.4f -> %.4f)", calibration.describe(), calibration.ece_before,
                calibration.ece_after)
    if ensure_temperature_step(Path(run_dir) / "configs" / "inference.yaml"):
        logger.warning("%s predated calibration: the temperature step was added to its postprocessing",
                       Path(run_dir) / "configs" / "inference.yaml")
    return calibration


def ensure_temperature_step(config_file: Any) -> bool:
    """Add the temperature step to an inference config written before calibration existed.

    Args:
        config_file: a run folder's ``configs/inference.yaml``.

    Returns:
        Whether the file was changed (``False``: it already applies ``calibration.json``, or is absent).
    """
    from pathlib import Path

    import yaml

    from cxrkit.atomic import atomic_write_text

    path = Path(config_file)
    if not path.is_file():
        return False
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    post = config.get("postprocessing")
    if "calibration_file" in config or not isinstance(post, dict) or not isinstance(post.get("transforms"), list):
        return False
    config["calibration_file"] = "$os.path.join(@bundle_root, 'calibration.json')"
    post["transforms"].insert(0, {"_target_": "cxrkit.calibration.TemperatureScaled", "keys": "pred",
                                  "calibration_file": "@calibration_file"})
    atomic_write_text(path, "# cxrkit calibrate added the temperature step (calibration.json) to postprocessing.\n"
                      + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=110))
    return True


class TemperatureFit:
    """Fit the temperature at the end of training when ``enabled`` (rank 0 only).

    Args:
        run_paths: the run folder.
        enabled: ``--calibrate`` (bool or "true"/"false").
    """

    def __init__(self, run_paths: Any, enabled: Any = False) -> None:
        self.paths = run_paths
        self.enabled = flag(enabled, "calibrate")

    def run(self) -> Any:
        """Fit and write ``calibration.json``; ``None`` when disabled or not rank 0."""
        from cxrkit.engine.distributed import is_main

        if not self.enabled or not is_main():
            return None
        return calibrate_run(self.paths.root)
