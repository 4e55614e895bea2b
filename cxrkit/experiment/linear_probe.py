"""Linear probe: train only a linear head on cached backbone features, and write a complete run folder.

The backbone (a weight plugin's pretrained network) is frozen; its pooled
features are computed once per image and cached (:mod:`cxrkit.experiment.features`),
so every epoch trains a logistic regression (``head="linear"``) on a small
matrix: Adam, mini-batches of ``batch_size``, the same number of epochs as
fine-tuning. Training and validation run on MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator`` with the engine's own metrics and handlers, so the run
folder follows the same contract as a fine-tuning run: ``metrics.json`` with
per-epoch train/val rows, ``predictions.csv`` of the best model,
``models/model.pt`` = the full :class:`~cxrkit.networks.classifier.CXRClassifier`
``state_dict`` (backbone + trained linear head), and ``configs/`` from the bundle
generator, so the run folder can be evaluated, served and used for inference.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from ignite.engine import Engine, Events

from cxrkit.engine.resume import RunCheckpoint
from cxrkit.experiment.features import FeatureCache, FeatureKey, extract_features, tensors_digest

__all__ = ["LinearProbeResult", "probe_features", "run_linear_probe"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinearProbeResult:
    """What :func:`run_linear_probe` did.

    Attributes:
        run_dir: the run folder.
        cache_hit: whether the features came from the cache (no backbone forward pass).
        cache_file: the cached features file.
        feature_time_s: seconds spent getting the features (computing or loading).
        train_time_s: seconds spent training the head (all epochs, validation included).
    """

    run_dir: Path
    cache_hit: bool
    cache_file: Path
    feature_time_s: float
    train_time_s: float


def probe_features(model: Any, items: Sequence[dict[str, Any]], root: str, source: Any, image_size: int, *,
                   cache: FeatureCache, batch_size: int = 32, device: Any = "cpu",
                   progress: bool = True) -> tuple[torch.Tensor, bool, Path]:
    """Features of ``items`` through ``model.backbone``, from the cache or computed (and cached).

    Items are stored in sorted image order, so every split (and every fold) of
    the same images shares one cache entry.

    Args:
        model: a :class:`~cxrkit.networks.classifier.CXRClassifier` (its ``backbone`` and ``weights_info``).
        items: ``{"image", "label"}`` dicts.
        root: the dataset root (image paths in the key are relative to it).
        source: the weight source (preprocessing settings).
        image_size: network input size.
        cache: where features are kept.
        batch_size: images per forward pass.
        device: where the backbone runs.
        progress: progress bar while computing.

    Returns:
        ``(features in the order of items, cache_hit, cache file)``.
    """
    from cxrkit.data.transforms import build_transforms

    images = sorted({str(it["image"]) for it in items})
    sha = model.weights_info.get("sha256") or "init:" + tensors_digest(model.backbone.state_dict())
    key = FeatureKey.create(weights_sha256=sha, images=images, root=root, source=source,
                            image_size=image_size, in_channels=model.in_channels)
    path, _ = cache.paths(key)
    stored = cache.load(key)
    hit = stored is not None
    if stored is None:
        logger.info("computing %s features of %d images (cache miss: %s)", source.name, len(images), path)
        transform = build_transforms(source, int(image_size), train=False)
        stored = extract_features(model.backbone.to(device), [{"image": i} for i in images], transform,
                                  batch_size=batch_size, device=device, progress=progress,
                                  desc=f"{source.name} features")
        bad = int((~torch.isfinite(stored)).any(dim=1).sum())
        if bad:
            raise ValueError(
                f"the {source.name} backbone gives non-finite features for {bad} of {len(images)} images "
                f"(weights: {model.weights_info.get('path') or 'random initialisation'}); the weight file may be "
                f"damaged or not a trained checkpoint (check it with `cxrkit weights check {source.name} FILE`)"
            )
        cache.save(key, stored, images)
    else:
        logger.info("using cached %s features: %s", source.name, path)
    row = {image: i for i, image in enumerate(images)}
    return stored[[row[str(it["image"])] for it in items]], hit, path


class _FinalCheckpoint(RunCheckpoint):
    """The engine's resume checkpoint (``models/checkpoint_last.pt``, same objects as a bundle run), written
    once when training completes: saving the whole backbone every epoch would cost more than the epoch."""

    def attach(self, engine: Engine) -> None:
        super().attach(engine)
        engine.remove_event_handler(self.save, Events.EPOCH_COMPLETED)
        engine.add_event_handler(Events.COMPLETED, self.save)


def _settings(plugin: str, data: Any, paths: Any, params: Any, **values: Any) -> dict[str, Any]:
    """The run's ``configs/train.yaml``: the plugin's generated training config with this run's values."""
    import yaml

    from cxrkit.bundle.generate import render_config

    config = yaml.safe_load(render_config("train", params))
    config.update(values)
    config.update(
        plugin=plugin, head="linear", freeze_until="all", dataset=data.dataset, dataset_dir=data.root,
        task=data.task, split_manifest=str(paths.split), bundle_root=str(paths.root), output_dir=str(paths.root),
        resume=False, mode="linear_probe",
    )
    return config


def run_linear_probe(
    plugin: str,
    data: Any,
    output_dir: str | Path | None = None,
    *,
    epochs: int = 50,
    lr: float = 1e-3,
    batch_size: int = 32,
    image_size: int | None = None,
    seed: int = 0,
    device: Any = "auto",
    weights_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    best_metric: str = "val_accuracy",
    positive_class: str | None = None,
    progress: bool = True,
) -> LinearProbeResult:
    """Train a linear head on ``plugin``'s frozen, cached features and write a run folder.

    Args:
        plugin: weight plugin name.
        data: the prepared split (:class:`cxrkit.engine.prepare.PreparedData`).
        output_dir: the run folder (default ``runs/<plugin>-<timestamp>``).
        epochs: training epochs of the head.
        lr: Adam learning rate.
        batch_size: feature vectors per optimisation step (and images per feature batch).
        image_size: network input size (default: the plugin's own).
        seed: seed of the head's initialisation, the batch order and a random backbone.
        device: ``auto``, ``cpu``, ``cuda``...
        weights_path: the plugin's weight file (default: its usual places).
        cache_dir: the feature cache folder (default :func:`~cxrkit.experiment.features.default_cache_dir`).
        best_metric: validation metric choosing ``models/model.pt``.
        positive_class: the disease class of a binary task (default: the class not named Normal).
        progress: progress bars.

    Returns:
        The :class:`LinearProbeResult`.

    Raises:
        cxrkit.weights.WeightError: the weight file is missing or unusable.
        cxrkit.engine.record.RunDirError: ``output_dir`` already holds a run.
        ValueError: bad settings.
    """
    from monai.engines import SupervisedEvaluator, SupervisedTrainer
    from monai.handlers import StatsHandler, ValidationHandler
    from monai.utils import set_determinism
    from torch.utils.tensorboard import SummaryWriter

    from cxrkit.bundle.generate import BundleParams
    from cxrkit.engine import metrics, workflow
    from cxrkit.engine.handlers import BestModelCheckpoint, MetricsRecorder, ValidationEarlyStopping
    from cxrkit.engine.losses import build_loss
    from cxrkit.engine.record import RunPaths, RunRecorder, atomic_write_json
    from cxrkit.engine.resume import EpochSeeding, RNGState
    from cxrkit.engine.writers import PredictionsWriter
    from cxrkit.networks.classifier import CXRClassifier
    from cxrkit.weights import get_source

    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    source = get_source(plugin)
    size = int(image_size or source.input_size)
    torch_device = workflow.select_device(device)
    set_determinism(seed=int(seed))
    classes = list(data.classes)
    model = CXRClassifier(source.name, len(classes), head="linear", weights_path=weights_path, freeze_until="all")
    paths = RunPaths.create(output_dir, source.name)

    started = time.perf_counter()
    cache = FeatureCache(cache_dir)
    all_items = list(data.train) + list(data.val)
    feats, hit, cache_file = probe_features(model, all_items, data.root, source, size, cache=cache,
                                            batch_size=batch_size, device=torch_device, progress=progress)
    feature_time = time.perf_counter() - started
    model = model.cpu()
    n_train = len(data.train)
    train_items = [{"image": feats[i], "label": it["label"], "index": i} for i, it in enumerate(data.train)]
    val_items = [{"image": feats[n_train + i], "label": it["label"], "index": i} for i, it in enumerate(data.val)]

    set_determinism(seed=int(seed))  # batch order independent of whether the features were computed
    head = model.head.to(torch_device)
    positive_index = metrics.positive_class_index(classes, positive_class)
    loss = build_loss("ce", class_counts=data.train_class_counts, class_names=classes, device=torch_device)
    optimizer = torch.optim.Adam(head.parameters(), lr=float(lr))
    writer = SummaryWriter(log_dir=str(paths.tensorboard))
    train_loader = workflow.make_loader(train_items, batch_size=batch_size, shuffle=True, seed=int(seed))
    val_loader = workflow.make_loader(val_items, batch_size=batch_size, shuffle=False, seed=int(seed))

    val_metrics = metrics.classification_metrics(classes, prefix="val_", positive_index=positive_index,
                                                 loss_function=loss)
    best = BestModelCheckpoint(paths.models, model, metric=best_metric)
    evaluator = SupervisedEvaluator(
        device=torch_device, val_data_loader=val_loader, network=head, prepare_batch=workflow.prepare_batch,
        key_val_metric=workflow.pick_metrics(val_metrics, best_metric, True),
        additional_metrics=workflow.pick_metrics(val_metrics, best_metric, False),
        metric_cmp_fn=workflow.metric_comparator(best_metric),
        val_handlers=[best, PredictionsWriter(paths.predictions, data.val, classes, root=data.root, when="best")],
    )
    recorder = MetricsRecorder(paths.metrics_json, evaluator, optimizer, classes, best,
                               positive_index=positive_index, summary_writer=writer)
    params = BundleParams(plugin=source.name, image_size=size, head="linear", classes=tuple(classes),
                          in_channels=model.in_channels, bundle_root=str(paths.root))
    settings = _settings(source.name, data, paths, params, epochs=int(epochs), lr=float(lr),
                         batch_size=int(batch_size), image_size=size, seed=int(seed), device=str(device),
                         weights_path=None if weights_path is None else str(weights_path),
                         best_metric=best_metric, positive_class=positive_class)
    run_recorder = RunRecorder(paths, data, model, size, recorder=recorder, settings=settings, device=torch_device)
    train_metrics = metrics.training_metrics()
    trainer = SupervisedTrainer(
        device=torch_device, max_epochs=int(epochs), train_data_loader=train_loader, network=head,
        optimizer=optimizer, loss_function=loss, prepare_batch=workflow.prepare_batch,
        key_train_metric={"train_accuracy": train_metrics["train_accuracy"]},
        additional_metrics={"train_loss": train_metrics["train_loss"]},
        train_handlers=[run_recorder, EpochSeeding(train_loader, int(seed)), StatsHandler(iteration_log=False),
                        ValidationHandler(validator=evaluator, interval=1, epoch_level=True), recorder,
                        _FinalCheckpoint(paths.models, {
                            "model": model, "optimizer": optimizer, "rng": RNGState(), "history": recorder,
                            "best_model": best, "early_stopping": ValidationEarlyStopping(evaluator, best_metric),
                        })],
        decollate=False,
    )
    started = time.perf_counter()
    try:
        trainer.run()
    finally:
        writer.close()
    train_time = time.perf_counter() - started
    summary = json.loads(paths.summary.read_text())
    summary["linear_probe"] = {"feature_cache": str(cache_file), "cache_hit": hit,
                               "feature_time_s": round(feature_time, 3), "train_time_s": round(train_time, 3)}
    atomic_write_json(paths.summary, summary)
    logger.info("linear probe %s: %s (features %s in %.1fs, head trained in %.1fs)", source.name, paths.root,
                "from cache" if hit else "computed", feature_time, train_time)
    return LinearProbeResult(paths.root, hit, cache_file, feature_time, train_time)
