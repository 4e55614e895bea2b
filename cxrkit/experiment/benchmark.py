"""Benchmark: epoch time of a linear probe on cached features vs a fine-tuning epoch, on the same split.

Usage::

    python -m cxrkit.experiment.benchmark --dataset_dir data/COVID-19_Radiography_Dataset --image_size 64

Both runs train on one split of the same images with the same batch size; the
epoch times are the ``time_s`` column of each run's ``metrics.json`` (training
and validation of one epoch). The linear probe is run twice: the first run
computes and caches the features (a one-off cost, reported separately), the
second finds them in the cache. Both are runs of the plugin's bundle
(:func:`cxrkit.bundle.runner.run_bundle`; the probe with ``mode: linear_probe``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

__all__ = ["benchmark_linear_probe", "machine_description", "build_parser", "main"]

logger = logging.getLogger(__name__)


def machine_description(device: Any = "cpu") -> str:
    """One line: CPU model and cores, torch threads, and the GPU when ``device`` is CUDA."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(torch.device(device))}"
    return text


def _epoch_times(run_dir: Path) -> list[float]:
    from cxrkit.runfolder import RunPaths

    rows = json.loads(RunPaths.of(run_dir).metrics_json.read_text())["epochs"]
    return [float(r["time_s"]) for r in rows]


def benchmark_linear_probe(dataset: str, dataset_dir: str | Path, *, plugin: str = "random", image_size: int = 64,
                           epochs: int = 3, finetune_epochs: int = 2, batch_size: int = 32,
                           max_items: int | None = None, device: str = "cpu", seed: int = 0,
                           work_dir: str | Path | None = None) -> dict[str, Any]:
    """Time fine-tuning epochs and linear-probe epochs of ``plugin`` on one split.

    Args:
        dataset: dataset adapter name.
        dataset_dir: dataset folder.
        plugin: weight plugin (``random`` needs no file).
        image_size: input size in pixels.
        epochs: linear-probe epochs per run.
        finetune_epochs: fine-tuning epochs.
        batch_size: batch size of both.
        max_items: use at most this many images.
        device: ``cpu``, ``cuda``...
        seed: split and training seed.
        work_dir: where the runs and the feature cache go (default: a temporary folder, removed).

    Returns:
        ``{"machine", "images", "finetune_epoch_s", "feature_extraction_s", "linear_probe_epoch_s",
        "speedup_per_epoch", ...}`` (seconds; epoch times are medians).
    """
    from cxrkit.bundle.runner import run_bundle
    from cxrkit.engine.prepare import prepare_data
    from cxrkit.experiment.linear_probe import run_linear_probe

    with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp:
        work = Path(work_dir) if work_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = prepare_data(dataset, str(dataset_dir), seed=seed, max_items=max_items, progress=False)
        split = data.split.save(work / "split.json")
        settings = {
            "dataset": dataset, "dataset_dir": str(Path(dataset_dir).resolve()), "split_manifest": str(split),
            "max_items": max_items, "seed": seed, "image_size": image_size, "batch_size": batch_size,
            "device": device, "progress": False,
        }
        started = time.perf_counter()
        run_bundle("training", plugin, {**settings, "epochs": finetune_epochs, "output_dir": str(work / "finetune")})
        finetune_total = time.perf_counter() - started
        probes = [run_linear_probe(plugin, {**settings, "epochs": epochs, "output_dir": str(work / f"probe{i}"),
                                            "feature_cache": str(work / "features")}) for i in (1, 2)]
        finetune = _epoch_times(work / "finetune")
        probe = _epoch_times(probes[1].run_dir)
        result = {
            "machine": machine_description(device),
            "device": device,
            "plugin": plugin,
            "dataset": dataset,
            "images": {"train": len(data.train), "val": len(data.val)},
            "image_size": image_size,
            "batch_size": batch_size,
            "finetune_epoch_s": round(statistics.median(finetune), 3),
            "finetune_total_s": round(finetune_total, 3),
            "feature_extraction_s": round(probes[0].feature_time_s, 3),
            "feature_cache_load_s": round(probes[1].feature_time_s, 3),
            "linear_probe_epoch_s": round(statistics.median(probe), 4),
            "linear_probe_first_run_s": round(probes[0].feature_time_s + probes[0].train_time_s, 3),
            "cache_hit_second_run": probes[1].cache_hit,
        }
        result["speedup_per_epoch"] = round(result["finetune_epoch_s"] / max(result["linear_probe_epoch_s"], 1e-6), 1)
    return result


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cxrkit.experiment.benchmark`` (cxrkit's option vocabulary)."""
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer

    positive = arg_type(integer, minimum=1)
    parser = argparse.ArgumentParser(prog="python -m cxrkit.experiment.benchmark",
                                     description=__doc__.splitlines()[0], formatter_class=CommandFormatter)
    add_option(parser, "--dataset", default="radiography", help="dataset adapter (default: radiography)")
    add_common(parser, "dataset_dir", "--root", required=True)
    add_option(parser, "--plugin", default="random", help="weight plugin (default: random)")
    add_common(parser, "image_size", default=64)
    add_common(parser, "epochs", default=3, help="linear-probe epochs (default: 3)")
    add_option(parser, "--finetune_epochs", type=positive, default=2, metavar="N",
               help="fine-tuning epochs (default: 2)")
    add_common(parser, "batch_size", default=32)
    add_option(parser, "--max_items", type=positive, default=None, metavar="N", help="use at most N images")
    add_common(parser, "device", default="cpu", help="cpu (default), cuda or cuda:N")
    add_common(parser, "output_file", "--out", default=None, help="also write the JSON to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark and print its JSON."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    result = benchmark_linear_probe(args.dataset, args.dataset_dir, plugin=args.plugin, image_size=args.image_size,
                                    epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                                    batch_size=args.batch_size, max_items=args.max_items, device=args.device)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output_file:
        Path(args.output_file).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
