"""The demo: a small synthetic chest-X-ray-like dataset, a short training run, an evaluation.

Everything happens locally in minutes on a CPU, with no download:

1. :func:`make_synthetic_dataset` draws grey 64 px "radiographs" in the COVID-19
   Radiography Database layout (``COVID-19_Radiography_Dataset/{COVID,Normal}/``):
   a thorax with two dark lung fields, a heart shadow, rib texture and noise;
   the ``COVID`` images add bilateral, peripheral, lower-zone opacities (the
   typical COVID-19 pattern), which is the learnable class difference. A
   ``SYNTHETIC_DATA_README.txt`` says the images are synthetic.
2. :func:`run_demo` trains the ``inat_swav`` bundle (the study's best weight
   source) for a few epochs at low resolution through MONAI's bundle runner,
   from random initialisation when the weight file is absent, then evaluates
   the run folder on its held-out test part (its validation part when the
   dataset is too small for one).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["make_synthetic_dataset", "synthetic_xray", "run_demo", "DemoResult", "DEMO_CLASSES"]

logger = logging.getLogger(__name__)

DEMO_CLASSES = ("COVID", "Normal")
_README = """SYNTHETIC DATA - NOT REAL PATIENTS, NOT FOR ANY MEDICAL USE.

These {n} images were drawn by `cxrkit demo` (cxrkit.demo.make_synthetic_dataset,
seed {seed}) to look a little like chest radiographs: a thorax, two lung fields,
a heart shadow, rib texture and noise. Images in COVID/ add bilateral peripheral
opacities in the lower lung zones; images in Normal/ do not. They only exist to
show that cxrkit trains, evaluates and records a run end to end. The folder
layout is the COVID-19 Radiography Database's, so `--dataset radiography` reads it.
"""


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float) -> np.ndarray:
    return np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * r * r)))


def synthetic_xray(covid: bool, size: int = 64, rng: np.random.Generator | None = None,
                   return_lungs: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One synthetic chest "radiograph" as a ``(size, size)`` uint8 array (bright = dense).

    Args:
        covid: add bilateral peripheral lower-zone opacities.
        size: image side in pixels.
        rng: random generator (geometry, texture and noise vary per image).
        return_lungs: also return the boolean ``(size, size)`` mask of the two lung fields.
    """
    from scipy.ndimage import gaussian_filter

    rng = rng or np.random.default_rng()
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    img = 0.08 + 0.05 * yy
    img = np.where(_ellipse(yy, xx, 0.55, 0.5, 0.5, 0.44 + rng.uniform(-0.03, 0.03)), 0.55, img)  # soft tissue
    lungs = np.zeros_like(img, dtype=bool)
    centres = []
    for side in (-1, 1):
        cy = 0.5 + rng.uniform(-0.03, 0.03)
        cx = 0.5 + side * (0.2 + rng.uniform(-0.02, 0.02))
        ry, rx = 0.3 + rng.uniform(-0.03, 0.03), 0.14 + rng.uniform(-0.015, 0.015)
        lungs |= _ellipse(yy, xx, cy, cx, ry, rx)
        centres.append((cy, cx, ry, rx, side))
    img = np.where(lungs, 0.18, img)
    ribs = 0.05 * np.sin(2 * np.pi * (yy * (7 + rng.uniform(-0.5, 0.5)) + 0.3 * np.abs(xx - 0.5)))
    img = img + np.where(lungs, ribs, 0.0)
    img = img + 0.35 * _blob(yy, xx, 0.62, 0.46 + rng.uniform(-0.02, 0.02), 0.09)  # heart shadow
    if covid:
        for cy, cx, ry, rx, side in centres:
            for _ in range(int(rng.integers(2, 4))):
                oy = cy + ry * rng.uniform(0.05, 0.6)  # lower zones
                ox = cx + side * rx * rng.uniform(0.3, 0.8)  # periphery
                img = img + np.where(lungs, 0.32 * _blob(yy, xx, oy, ox, rng.uniform(0.05, 0.08)), 0.0)
    img = gaussian_filter(img, sigma=size / 96.0)
    img = img + rng.normal(0.0, 0.025, img.shape)
    pixels = (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)
    return (pixels, lungs) if return_lungs else pixels


def _variant(base: np.ndarray, shift: tuple[int, int], noise_seed: int) -> np.ndarray:
    """``base`` moved by ``shift`` pixels with fresh noise: another image of the same kind, cheaply."""
    noise = np.random.default_rng(noise_seed).normal(0.0, 6.0, base.shape)
    return np.clip(np.roll(base, shift, axis=(0, 1)).astype(np.float64) + noise, 0, 255).round().astype(np.uint8)


def make_synthetic_dataset(root: str | Path, per_class: int = 50, size: int = 64, seed: int = 0,
                           distinct: int | None = None, workers: int | None = None) -> Path:
    """Write ``per_class`` PNGs per class under ``root/COVID-19_Radiography_Dataset/{COVID,Normal}/``.

    Args:
        root: folder to create the dataset in.
        per_class: images per class.
        size: image side in pixels.
        seed: random seed (the same seed draws the same images).
        distinct: draw at most this many images per class from scratch; the others are drawn from them by a
            small random shift and fresh noise (thousands of images in seconds, for benchmarks). ``None``: all.
        workers: threads writing the files (default: the CPU's cores).

    Returns:
        The dataset folder (pass it as ``--dataset_dir``).

    Raises:
        ValueError: fewer than 5 images per class or an image smaller than 32 px.
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    if int(per_class) < 5:
        raise ValueError(f"per_class must be at least 5, got {per_class}")
    if int(size) < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    folder = Path(root).expanduser().resolve() / "COVID-19_Radiography_Dataset"
    rng = np.random.default_rng(int(seed))
    fresh = int(per_class) if distinct is None else max(1, min(int(per_class), int(distinct)))
    reach = max(1, int(size) // 16)

    def write(job: tuple[Path, np.ndarray, tuple[int, int] | None, int]) -> None:
        path, base, shift, noise_seed = job
        pixels = base if shift is None else _variant(base, shift, noise_seed)
        Image.fromarray(pixels, mode="L").save(path)

    jobs = []
    for cls in DEMO_CLASSES:
        (folder / cls).mkdir(parents=True, exist_ok=True)
        bases = [synthetic_xray(cls == "COVID", int(size), rng) for _ in range(fresh)]
        for i in range(1, int(per_class) + 1):
            if i <= fresh:
                jobs.append((folder / cls / f"{cls}-{i}.png", bases[i - 1], None, 0))
            else:
                shift = (int(rng.integers(-reach, reach + 1)), int(rng.integers(-reach, reach + 1)))
                jobs.append((folder / cls / f"{cls}-{i}.png", bases[int(rng.integers(fresh))], shift,
                             int(rng.integers(2**31))))
    with ThreadPoolExecutor(max_workers=max(1, workers or os.cpu_count() or 1)) as pool:
        list(pool.map(write, jobs))
    text = _README.format(n=2 * int(per_class), seed=int(seed))
    (folder / "SYNTHETIC_DATA_README.txt").write_text(text, encoding="utf-8")
    (folder.parent / "SYNTHETIC_DATA_README.txt").write_text(text, encoding="utf-8")
    logger.info("wrote %d synthetic images to %s", 2 * int(per_class), folder)
    return folder


@dataclass
class DemoResult:
    """What the demo produced.

    Attributes:
        dataset: the synthetic dataset folder.
        run_dir: the training run folder (a servable bundle).
        pretrained: whether the plugin's pretrained weights were used.
        metrics: ``metrics.json`` of the run.
        evaluation: the evaluation's ``metrics.json`` (held-out test part; ``subset`` says which).
    """

    dataset: Path
    run_dir: Path
    pretrained: bool
    metrics: dict[str, Any]
    evaluation: dict[str, Any]


def weights_available(plugin: str) -> bool:
    """Whether ``plugin``'s weight file is on this machine (no download is ever tried)."""
    from cxrkit.weights import WeightError, find_weight_file, get_source

    source = get_source(plugin)
    if not source.pretrained:
        return False
    try:
        find_weight_file(source)
    except WeightError:
        return False
    return True


def run_demo(
    output_dir: str | Path = "runs/demo",
    *,
    plugin: str = "inat_swav",
    epochs: int = 10,
    image_size: int = 64,
    batch_size: int = 16,
    per_class: int = 50,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
) -> DemoResult:
    """Make the synthetic dataset, train ``plugin``'s bundle on it, evaluate the run, write its report.

    Args:
        output_dir: the demo's folder: ``data/`` (the synthetic dataset) and ``runs/`` (the run folder).
        plugin: the weight plugin whose bundle is trained.
        epochs: training epochs.
        image_size: network input size (and the synthetic images' size, at least 32 px).
        batch_size: images per batch.
        per_class: synthetic images per class.
        seed: dataset and training seed.
        device: ``auto``, ``cpu``, ``cuda``...
        progress: progress bars.

    Raises:
        cxrkit.registry.RegistryError: no weight plugin of that name.
    """
    from cxrkit.bundle import cached_bundle
    from cxrkit.bundle.runner import run_bundle
    from cxrkit.report import write_report
    from cxrkit.runfolder import RunPaths

    work = Path(output_dir).expanduser().resolve()
    bundle = cached_bundle(plugin)
    dataset = make_synthetic_dataset(work / "data", per_class=per_class, size=max(int(image_size), 32), seed=seed)
    pretrained = weights_available(plugin)
    run_dir = run_bundle("training", bundle, {
        "dataset_dir": str(dataset),
        "dataset": "radiography",
        "epochs": int(epochs),
        "image_size": int(image_size),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "device": device,
        "output_dir": str(work / "runs" / f"{plugin}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"),
        "allow_missing_weights": not pretrained,
        "progress": bool(progress),
        "train_console#summary": False,  # the demo's summary names the report it writes
    })
    run = RunPaths.of(run_dir)
    run_bundle("evaluate", run.root, {
        "dataset_dir": str(dataset),
        "subset": "test" if run.test_predictions.is_file() else "val",  # the held-out part, when there is one
        "device": device,
        "progress": bool(progress),
    })
    metrics = json.loads(run.metrics_json.read_text())
    evaluation = json.loads(run.evaluation_metrics.read_text())
    write_report(run.root, bootstrap=1000, seed=seed)
    return DemoResult(dataset, run.root, pretrained, metrics, evaluation)
