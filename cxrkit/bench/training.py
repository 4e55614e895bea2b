"""Training speed: the bundle trainer against a plain PyTorch loop, data waiting, linear probe vs fine-tuning.

:func:`bundle_trainer` builds the real ``SupervisedTrainer`` from a bundle's
``configs/train.yaml`` exactly as ``cxrkit run training`` does
(:func:`cxrkit.bundle.runner.bundle_workflow`: MONAI's ``create_workflow`` ->
``initialize`` -> ``run`` -> ``finalize``), on a synthetic on-disk dataset in the COVID-19
Radiography layout (:func:`cxrkit.demo.make_synthetic_dataset`), and times its
steps with :class:`~cxrkit.bench.timing.StepTimer`. :func:`plain_loop` then
trains the SAME network, optimiser, loss function and data loader with a
textbook PyTorch loop. Both use the bundle's device, mixed precision and memory
format settings.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from cxrkit.bench.timing import StepStats, summarize

__all__ = ["BundleRun", "make_bench_dataset", "bundle_trainer", "plain_loop", "data_wait", "probe_vs_finetune"]

logger = logging.getLogger(__name__)


@dataclass
class BundleRun:
    """The objects of a finished bundle training run, for the comparisons.

    Attributes:
        timer: the :class:`~cxrkit.bench.timing.StepTimer` on the trainer.
        trainer: the bundle's ``SupervisedTrainer``.
        batch_size: images per step.
        workflow: MONAI's ``ConfigWorkflow`` (its parser resolves any config id).
        network: the trained network; ``optimizer``, ``loss_function``, ``loader``: the run's.
        device: the training device; ``amp_kwargs``: its autocast arguments (empty: fp32).
    """

    @property
    def trainer_stats(self) -> StepStats:
        """The trainer's timed steps: the fastest epoch so far (see :func:`~cxrkit.bench.timing.best_round`)."""
        return self.timer.stats(self.batch_size, best=True)

    def close(self) -> None:
        """The workflow's ``finalize`` step (closes TensorBoard, ends a process group)."""
        self.workflow.finalize()

    def next_epoch(self) -> None:
        """Train (and time) one more epoch with the same trainer, as a longer run would."""
        self.trainer.state.max_epochs = int(self.trainer.state.epoch) + 1
        self.trainer.run()

    timer: Any
    trainer: Any
    batch_size: int
    workflow: Any
    network: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_function: Any
    loader: torch.utils.data.DataLoader
    device: torch.device
    amp_kwargs: dict[str, Any]


def make_bench_dataset(root: Path, n_train: int, image_size: int, val_fraction: float = 0.1, seed: int = 0) -> Path:
    """A synthetic two-class dataset with at least ``n_train`` training images after a ``val_fraction`` split.

    Up to 64 images per class are drawn from scratch; the rest are shifted, re-noised copies of them
    (:func:`cxrkit.demo.make_synthetic_dataset` with ``distinct``), so thousands of 224 px images take seconds.
    """
    from cxrkit.demo import make_synthetic_dataset

    total = int(n_train / (1.0 - val_fraction)) + 4
    # at least 10 images per class, so a validation split holds both classes
    return make_synthetic_dataset(root, per_class=max(10, (total + 1) // 2), size=int(image_size), seed=seed,
                                  distinct=64)


def bundle_trainer(bundle: Path, dataset_dir: Path, output_dir: Path, *, image_size: int, batch_size: int,
                   steps: int, warmup: int, device: str, plugin_overrides: dict[str, Any] | None = None) -> BundleRun:
    """Train one epoch of ``warmup + steps`` batches with the bundle's trainer and time it.

    Args:
        bundle: the bundle folder (``bundles/<plugin>``).
        dataset_dir: the dataset (radiography layout).
        output_dir: the run folder to write.
        image_size: network input size.
        batch_size: images per step.
        steps: timed steps.
        warmup: untimed first steps.
        device: ``auto``, ``cpu`` or ``cuda``.
        plugin_overrides: further config overrides.

    Returns:
        The timings and the run's objects.
    """
    from cxrkit.bench.timing import StepTimer
    from cxrkit.bundle.runner import bundle_workflow
    from cxrkit.engine.hardware import amp_kwargs

    overrides: dict[str, Any] = {
        "bundle_root": str(bundle), "dataset_dir": str(dataset_dir), "output_dir": str(output_dir),
        "image_size": int(image_size), "batch_size": int(batch_size), "epochs": 1, "device": device,
        "val_fraction": 0.1, "test_fraction": 0.0, "near_duplicates": False, "cache": True,
        "allow_missing_weights": True, "tensorboard_images": 0,
        # one epoch of exactly warm-up + timed steps (+1: the last step has no successor batch request)
        "train#trainer#epoch_length": int(warmup + steps),
    }
    overrides.update(plugin_overrides or {})
    workflow = bundle_workflow("training", bundle, overrides)
    parser = workflow.parser
    trainer = parser.get_parsed_content("train#trainer")
    timer = StepTimer(warmup=warmup)
    timer.attach(trainer)
    workflow.run()
    torch_device = parser.get_parsed_content("torch_device")
    return BundleRun(
        timer=timer,
        trainer=trainer,
        batch_size=int(batch_size),
        workflow=workflow,
        network=parser.get_parsed_content("network"),
        optimizer=parser.get_parsed_content("optimizer"),
        loss_function=parser.get_parsed_content("loss_function"),
        loader=parser.get_parsed_content("train#dataloader"),
        device=torch_device,
        amp_kwargs=amp_kwargs(parser.get_parsed_content("amp"), torch_device),
    )


def _batches(loader: Iterable, count: int) -> Iterable:
    produced = 0
    while produced < count:
        for batch in loader:
            yield batch
            produced += 1
            if produced >= count:
                return


def _tensor(value: Any, device: torch.device) -> torch.Tensor:
    tensor = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)
    return tensor.to(device, non_blocking=device.type == "cuda")


def plain_loop(network: torch.nn.Module, optimizer: torch.optim.Optimizer, loss_function: Any,
               loader: Iterable, *, steps: int, warmup: int, device: torch.device,
               amp_kwargs: dict[str, Any] | None = None, record: tuple[list, list] | None = None) -> StepStats:
    """A textbook PyTorch training loop over ``loader``; returns its timed steps.

    Args:
        record: ``(step_times, data_waits)`` lists the timed steps are appended to (to
            summarise several rounds together).
    """
    amp_kwargs = dict(amp_kwargs or {})
    network.train()
    step_s: list[float] = []
    wait_s: list[float] = []
    batch_size = 0
    iterator = iter(_batches(loader, warmup + steps))
    for index in range(warmup + steps):
        start = time.perf_counter()
        batch = next(iterator)
        got = time.perf_counter()
        images, labels = _tensor(batch["image"], device), _tensor(batch["label"], device)
        batch_size = int(images.shape[0])
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=bool(amp_kwargs), **amp_kwargs):
            loss = loss_function(network(images), labels)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            step_s.append(time.perf_counter() - start)
            wait_s.append(got - start)
    if record is not None:
        record[0].extend(step_s)
        record[1].extend(wait_s)
    return summarize(step_s, wait_s, batch_size)


def data_wait(run: BundleRun, *, steps: int, warmup: int) -> dict[str, StepStats]:
    """Share of step time spent waiting for data: uncached (``num_workers: auto``) vs the run's image cache.

    Both loaders read the run's training list with its preprocessing and are read by the plain loop:
    ``uncached`` decodes every image again in loader workers (``auto``: none on a CPU, up to 8 on a GPU;
    :func:`cxrkit.engine.hardware.loader_workers`), ``cached`` reads the trainer's own image cache.
    """
    from cxrkit.engine.loaders import make_dataset, make_loader

    parser = run.workflow.parser
    data = parser.get_parsed_content("data")
    transform = parser.get_parsed_content("train#preprocessing")
    batch_size = int(parser.get_parsed_content("batch_size"))
    seed = parser.get_parsed_content("seed")
    channels_last = parser.get_parsed_content("channels_last")
    datasets = {
        "uncached": make_dataset(data.train, transform, cache=False, num_workers="auto", device=run.device, seed=seed,
                                 channels_last=channels_last),
        "cached": parser.get_parsed_content("train#dataset"),
    }
    out = {}
    for name, dataset in datasets.items():
        loader = make_loader(dataset, batch_size=batch_size, shuffle=True, seed=seed, num_workers="auto",
                             device=run.device)
        out[name] = plain_loop(run.network, run.optimizer, run.loss_function, loader, steps=steps, warmup=warmup,
                               device=run.device, amp_kwargs=run.amp_kwargs)
        logger.info("%s loader (%d worker(s)): %.1f %% of each step waiting for data", name, loader.num_workers,
                    100 * out[name].data_wait_share)
        del loader  # its workers end here
    return out


def probe_vs_finetune(run: BundleRun, *, epochs: int = 3) -> dict[str, float]:
    """Epoch time of a linear probe (head only, on cached features) vs fine-tuning the whole network.

    The probe is the real one: the run's bundle trained with ``mode: linear_probe``
    (:func:`cxrkit.experiment.linear_probe.run_linear_probe`) on the run's own split,
    its features computed once (``feature_extraction_s``); its epoch time is the
    median ``time_s`` of its ``metrics.json``. The fine-tuning epoch is the bundle
    trainer's measured median step times the number of batches.
    """
    import json
    import statistics

    from cxrkit.experiment.linear_probe import run_linear_probe

    parser = run.workflow.parser
    paths = parser.get_parsed_content("run_paths")
    data = parser.get_parsed_content("data")
    batch_size = int(parser.get_parsed_content("batch_size"))
    overrides = {name: parser.get_parsed_content(name) for name in ("dataset", "device", "image_size", "seed")}
    overrides.update(
        dataset_dir=data.root, split_manifest=str(paths.split), batch_size=batch_size, epochs=int(epochs),
        output_dir=str(paths.root.parent / "linear_probe"), feature_cache=str(paths.root.parent / "features"),
        allow_missing_weights=True, progress=False, tensorboard_images=0,
    )
    probe = run_linear_probe(str(parser.get_parsed_content("plugin")), overrides,
                             parser.get_parsed_content("bundle_root"))
    rows = json.loads(type(paths).of(probe.run_dir).metrics_json.read_text())["epochs"]
    probe_epoch = statistics.median(float(r["time_s"]) for r in rows)
    n_batches = -(-len(data.train) // batch_size)
    finetune_epoch = run.trainer_stats.median_step_s * n_batches
    return {
        "train_images": len(data.train),
        "feature_extraction_s": round(probe.feature_time_s, 4),
        "probe_epoch_s": round(probe_epoch, 6),
        "finetune_epoch_s": round(finetune_epoch, 4),
        "finetune_over_probe": round(finetune_epoch / probe_epoch, 1) if probe_epoch > 0 else float("inf"),
    }
