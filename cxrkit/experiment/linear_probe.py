"""Linear probe: the bundle's own training run with the head trained on the frozen backbone's cached features.

A linear probe is a bundle training run with three settings::

    cxrkit run training bundles/inat_swav --dataset_dir DIR --mode linear_probe --head linear --freeze_until all

The train config's ``engine_inputs`` (:func:`engine_inputs`) then hands the
trainer and the evaluator the backbone's pooled features of every image instead
of the images, and the head instead of the whole network. The features are
computed once per image and cached (:mod:`cxrkit.experiment.features`). The head
is not trained by the fine-tuning optimiser: the trainer's iteration
(:class:`~cxrkit.experiment.logistic_probe.ConvergedProbeIteration`) fits it once
as published linear evaluations do (standardised features, logistic regression
run to convergence, ``C`` chosen on the validation part) and then only scores,
so every epoch reports the same converged model. Everything else is the
fine-tuning wiring of ``train.yaml``: the loss, the metrics, the best-model
checkpoint (``models/model.pt`` = the whole
:class:`~cxrkit.networks.classifier.CXRClassifier`), ``predictions.csv``,
resume, the run record. :func:`run_linear_probe` is the Python form used by
``cxrkit compare --mode linear_probe``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from cxrkit.experiment.features import FeatureCache, FeatureKey, extract_features, tensors_digest
from cxrkit.experiment.logistic_probe import ConvergedProbeIteration

__all__ = ["MODES", "EngineInputs", "engine_inputs", "LinearProbeResult", "probe_features", "run_linear_probe"]

logger = logging.getLogger(__name__)

#: the train config's ``mode`` values.
MODES = ("finetune", "linear_probe")


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

    Raises:
        ValueError: the backbone gives non-finite features (a damaged weight file).
    """
    from cxrkit.data.transforms import build_transforms
    from cxrkit.engine.hardware import loader_workers

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
                                  num_workers=loader_workers("auto", device), desc=f"{source.name} features")
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


@dataclass
class EngineInputs:
    """What the train config's trainer and evaluator run on.

    Attributes:
        train: training items (``image`` is a path, or a feature vector).
        val: validation items, in the order of the prepared validation list.
        network: the module the engines run: the whole network, or its head on features.
        features: whether the items hold cached features.
        details: entries for the run's ``summary.json`` (the feature cache of a linear probe).
        iteration: the trainer's iteration (``iteration_update``): ``None`` for the usual optimiser step;
            for a linear probe, :class:`~cxrkit.experiment.logistic_probe.ConvergedProbeIteration`.
    """

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    network: torch.nn.Module
    features: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    iteration: Callable | None = None

    def transform(self, preprocessing: Callable | None) -> Callable | None:
        """The dataset transform: the preprocessing for images, none for features."""
        return None if self.features else preprocessing


def engine_inputs(mode: Any, data: Any, network: Any, weight_source: Any, image_size: Any, *,
                  cache_dir: Any = None, batch_size: Any = 32, device: Any = "cpu",
                  progress: Any = True) -> EngineInputs:
    """The train config's ``engine_inputs``: images and the whole network, or cached features and the head.

    Args:
        mode: ``finetune`` or ``linear_probe``.
        data: the prepared split (:class:`cxrkit.engine.prepare.PreparedData`).
        network: the :class:`~cxrkit.networks.classifier.CXRClassifier` being trained.
        weight_source: the plugin's weight source (preprocessing of the cache key).
        image_size: network input size.
        cache_dir: the feature cache folder (``None``: :func:`~cxrkit.experiment.features.default_cache_dir`).
        batch_size: images per feature batch.
        device: where the backbone computes the features.
        progress: progress bar while computing features.

    Raises:
        ValueError: an unknown mode, or ``linear_probe`` without ``--head linear --freeze_until all``.
    """
    from cxrkit import options
    from cxrkit.networks.classifier import FREEZE_ALL

    chosen = str(options.optional(mode) or "finetune").strip().lower()
    if chosen not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if chosen == "finetune":
        return EngineInputs(list(data.train), list(data.val), network)
    stages = list(getattr(network.backbone, "stages", ()) or ())
    if network.head_name != "linear" or list(network.frozen_stages) != stages:
        raise ValueError(
            f"--mode linear_probe trains a linear head on the frozen backbone's cached features: add --head linear "
            f"--freeze_until {FREEZE_ALL} (got head {network.head_name}, frozen "
            f"{','.join(network.frozen_stages) or 'nothing'})"
        )
    started = time.perf_counter()
    items = list(data.train) + list(data.val)
    feats, hit, cache_file = probe_features(
        network, items, data.root, weight_source, options.integer(image_size, "image_size", minimum=1),
        cache=FeatureCache(options.text(cache_dir)), batch_size=options.integer(batch_size, "batch_size", minimum=1),
        device=device, progress=options.flag(progress, "progress"))
    seconds = time.perf_counter() - started
    n_train = len(data.train)
    train = [{"image": feats[i], "label": it["label"], "index": i} for i, it in enumerate(data.train)]
    val = [{"image": feats[n_train + i], "label": it["label"], "index": i} for i, it in enumerate(data.val)]
    details = {"linear_probe": {"feature_cache": str(cache_file), "cache_hit": hit,
                                "feature_time_s": round(seconds, 3)}}
    iteration = ConvergedProbeIteration(network.head, train, val, details["linear_probe"])
    return EngineInputs(train, val, network.head, features=True, details=details, iteration=iteration)


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


def run_linear_probe(plugin: str, overrides: dict[str, Any], bundle: str | Path | None = None) -> LinearProbeResult:
    """Train a linear head on ``plugin``'s frozen, cached features through its bundle's training config.

    Args:
        plugin: weight plugin name.
        overrides: the run's settings (``dataset_dir``, ``split_manifest``, ``output_dir``, ``epochs``...), as
            for :func:`cxrkit.bundle.runner.run_bundle`; ``mode``, ``head`` and ``freeze_until`` are set here.
        bundle: the bundle folder (default: the plugin's bundle, rendered by name).

    Returns:
        The :class:`LinearProbeResult`.

    Raises:
        cxrkit.weights.WeightError: the weight file is missing or unusable.
        cxrkit.runfolder.RunDirError: ``output_dir`` already holds a run.
        ValueError: bad settings.
    """
    from cxrkit.bundle.runner import run_bundle
    from cxrkit.runfolder import RunPaths

    settings = dict(overrides)
    settings.update(mode="linear_probe", head="linear", freeze_until="all")
    started = time.perf_counter()
    run_dir = run_bundle("training", bundle or plugin, settings)
    total = time.perf_counter() - started
    probe = json.loads(RunPaths.of(run_dir).summary.read_text())["linear_probe"]
    feature_time = float(probe["feature_time_s"])
    logger.info("linear probe %s: %s (features %s in %.1fs)", plugin, run_dir,
                "from cache" if probe["cache_hit"] else "computed", feature_time)
    return LinearProbeResult(Path(run_dir), bool(probe["cache_hit"]), Path(probe["feature_cache"]), feature_time,
                             round(max(total - feature_time, 0.0), 3))
