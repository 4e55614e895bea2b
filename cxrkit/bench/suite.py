"""The benchmark suite: its command-line options and its run (``cxrkit bench``, ``python -m cxrkit.bench``).

Writes ``benchmark.json`` and ``benchmark.md`` into ``--output_dir`` and prints the
Markdown table, a line ``trainer/plain ratio: X.XX``, a line estimating the
study's Table 5 protocol on this device and one ``PASS``/``FAIL`` line per
target. The defaults finish in a few minutes on a 2-core CPU; the targets are
checked here, never by timed tests.

Example::

    cxrkit bench --output_dir bench-out --image_size 128 --batch_size 16 --steps 10
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run_benchmark", "benchmark"]

logger = logging.getLogger("cxrkit.bench")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The benchmark's options (cxrkit's vocabulary: :mod:`cxrkit.options`)."""
    from cxrkit.options import add_common, add_option, arg_type, integer

    positive, count = arg_type(integer, minimum=1), arg_type(integer, minimum=0)
    add_common(parser, "output_dir", "--output", default="bench-out",
               help="folder for benchmark.json and benchmark.md (default: bench-out)")
    add_option(parser, "--bundle", default="random",
               help="bundle folder or plugin name (its network; weights are random when the file is absent)")
    add_common(parser, "image_size", default=128, help="training image size in pixels (default: 128)")
    add_common(parser, "batch_size", default=16,
               help="images per training step, at least 2: batch norm cannot train on one image (default: 16)")
    add_option(parser, "--steps", type=positive, default=10, metavar="N", help="timed training steps per loop")
    add_option(parser, "--warmup", type=count, default=2, metavar="N",
               help="untimed steps before timing (per loop and round; default: 2)")
    add_option(parser, "--rounds", type=positive, default=2, metavar="N",
               help="alternate trainer and plain loop this many times (evens out load changes; default: 2)")
    add_common(parser, "device")
    add_option(parser, "--inference_size", type=positive, default=224, metavar="PX",
               help="image size of the inference measurement (default: 224)")
    add_option(parser, "--inference_repeats", type=positive, default=4, metavar="N",
               help="timed forward passes per batch size (default: 4)")
    add_option(parser, "--whole_run_epochs", type=arg_type(integer, minimum=2), default=3, metavar="N",
               help="epochs of the whole-run measurement, validation and checkpoints included (default: 3)")
    add_option(parser, "--skip", nargs="*", default=[],
               choices=["data_wait", "inference", "linear_probe", "whole_run"], help="leave out these measurements")
    add_option(parser, "--work_dir", "--workdir", default=None, metavar="DIR",
               help="where the synthetic dataset and runs go (default: a temporary folder)")
    return parser


def run_benchmark(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Run every measurement; returns the results (without the target checks)."""
    import torch

    from cxrkit.bench.inference_speed import inference_speed
    from cxrkit.bench.timing import best_round, pooled
    from cxrkit.bench.training import bundle_trainer, data_wait, make_bench_dataset, plain_loop, probe_vs_finetune
    from cxrkit.bench.wholerun import whole_run
    from cxrkit.bundle import find_bundle
    from cxrkit.engine.hardware import loader_workers

    bundle = find_bundle(args.bundle)
    n_train = (args.warmup + args.steps) * args.batch_size
    dataset = make_bench_dataset(workdir / "data", n_train, args.image_size)
    logger.info("bundle trainer: %d + %d steps of %d images at %d px", args.warmup, args.steps, args.batch_size,
                args.image_size)
    run = bundle_trainer(bundle, dataset, workdir / "run", image_size=args.image_size, batch_size=args.batch_size,
                         steps=args.steps, warmup=args.warmup, device=args.device)
    plain_rounds: list[tuple[list, list]] = []
    for round_ in range(args.rounds):
        if round_:
            logger.info("round %d: bundle trainer, one more epoch", round_ + 1)
            run.next_epoch()
        logger.info("round %d: plain PyTorch loop on the same network, optimiser, loss and loader", round_ + 1)
        plain_rounds.append(([], []))
        plain_loop(run.network, run.optimizer, run.loss_function, run.loader, steps=args.steps, warmup=args.warmup,
                   device=run.device, amp_kwargs=run.amp_kwargs, record=plain_rounds[-1])
    trainer, plain = run.trainer_stats, best_round(plain_rounds, args.batch_size)
    network = run.network
    results: dict[str, Any] = {
        "settings": {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                       + (torch.cuda.get_device_name(run.device) if run.device.type == "cuda" else "no GPU"),
            "device": str(run.device), "device_type": run.device.type, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "plugin": network.weights_info.get("plugin"),
            "architecture": network.weights_info.get("architecture"), "image_size": args.image_size,
            "batch_size": args.batch_size, "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
            "amp": str(run.amp_kwargs.get("dtype", "off")), "inference_size": args.inference_size,
            "cudnn": _cudnn(run.device), "cache": repr(getattr(getattr(run.loader, "dataset", None), "cache", None)),
        },
        "training": {
            "trainer": trainer.to_dict(), "plain": plain.to_dict(),
            "trainer_over_plain": round(trainer.images_per_s / plain.images_per_s, 4),
            "all_rounds": {"trainer": run.timer.stats(args.batch_size).to_dict(),
                           "plain": pooled(plain_rounds, args.batch_size).to_dict()},
        },
    }
    if "data_wait" not in args.skip:
        logger.info("data waiting: uncached vs cached loader")
        waits = data_wait(run, steps=args.steps, warmup=args.warmup)
        results["data_wait"] = {k: v.to_dict() for k, v in waits.items()}
        results["settings"]["uncached_workers"] = loader_workers("auto", run.device)
    if "linear_probe" not in args.skip:
        logger.info("linear probe vs fine-tuning epoch")
        results["linear_probe"] = probe_vs_finetune(run)
    if "inference" not in args.skip:
        # a ViT is built for one image size (its position embedding): it is measured at the size it trained at
        fixed = getattr(network.backbone, "patch_size", None) and getattr(network.backbone, "image_size", None)
        inference_size = int(fixed or args.inference_size)
        results["settings"]["inference_size"] = inference_size
        logger.info("inference at %d px, batch 1 and 16", inference_size)
        results["inference"] = inference_speed(network, inference_size, in_channels=network.in_channels,
                                               repeats=args.inference_repeats, device=run.device,
                                               amp_kwargs=run.amp_kwargs)
    run.close()
    if "whole_run" not in args.skip:
        logger.info("whole run: %d epochs through the bundle, validation and checkpoints included", args.whole_run_epochs)
        results["whole_run"] = whole_run(bundle, dataset, workdir / "whole-run", image_size=args.image_size,
                                         batch_size=args.batch_size, epochs=args.whole_run_epochs,
                                         device=args.device, step_images_per_s=trainer.images_per_s)
    return results


def _cudnn(device: Any) -> str:
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return "not used (CPU)"
    return "deterministic" if torch.backends.cudnn.deterministic else (
        "autotuned" if torch.backends.cudnn.benchmark else "heuristics")


def benchmark(args: argparse.Namespace) -> int:
    """Run the benchmark with parsed options, write the report and print it; returns the exit code.

    Raises:
        ValueError: ``--batch_size`` below 2.
    """
    from cxrkit.bench.report import markdown, summary_lines, write_report

    if args.batch_size < 2:
        raise ValueError("--batch_size must be >= 2 (batch norm cannot train on one image)")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.work_dir:
        workdir = Path(args.work_dir)
        workdir.mkdir(parents=True, exist_ok=True)
        results = run_benchmark(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="cxrkit-bench-") as tmp:
            results = run_benchmark(args, Path(tmp))
    json_path, md_path = write_report(results, args.output_dir)
    print(markdown(results))
    print(f"wrote {json_path} and {md_path}")
    print(f"trainer/plain ratio: {results['training']['trainer_over_plain']:.2f}")
    for line in summary_lines(results):
        print(line)
    return 0
