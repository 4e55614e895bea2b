"""``cxrkit demo``: synthetic data, a short training run of the inat_swav bundle, an evaluation."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer

    p = sub.add_parser(
        "demo",
        help="train and evaluate on a small synthetic dataset (minutes on a CPU, no download)",
        description=(
            "Create a small synthetic chest-X-ray-like dataset (COVID vs Normal, Radiography layout), train the "
            "inat_swav bundle on it for a few epochs at low resolution, evaluate the run and print where the "
            "results are. Uses the plugin's pretrained weights when installed, random initialisation otherwise."
        ),
        formatter_class=CommandFormatter,
    )
    add_common(p, "output_dir", "--dir", default="runs/demo",
               help="the demo's output folder: data/ and runs/ (default: runs/demo)")
    add_option(p, "--plugin", default="inat_swav", help="weight plugin whose bundle is trained (default inat_swav)")
    add_common(p, "epochs", default=10, help="training epochs (default: 10)")
    add_common(p, "image_size", default=64, help="network input size in pixels (default: 64)")
    add_common(p, "batch_size", default=16, help="images per batch (default: 16)")
    add_option(p, "--per_class", type=arg_type(integer, minimum=5), default=50, metavar="N",
               help="synthetic images per class (default 50)")
    add_common(p, "seed")
    add_common(p, "device")
    add_common(p, "no_progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit import console
    from cxrkit.api import RunPaths, user_error
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.cli import CLIError
    from cxrkit.demo import run_demo, weights_available
    from cxrkit.engine.console import run_summary
    from cxrkit.weights import get_source

    source = get_source(args.plugin)
    if source.pretrained and not weights_available(args.plugin):
        print(
            f"The '{args.plugin}' weight file ({source.filenames[0]}) is not installed, so the demo trains from "
            f"RANDOM initialisation. To use the pretrained weights, run:\n  {source.fetch_command()}\n"
            f"(or `{source.import_command()}` for a file you already have)\n"
        )
    try:
        result = run_demo(
            args.output_dir, plugin=args.plugin, epochs=args.epochs, image_size=args.image_size,
            batch_size=args.batch_size, per_class=args.per_class, seed=args.seed, device=args.device,
            progress=args.progress,
        )
    except BundleNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - show the user's mistake, not MONAI's wrapper
        cause = user_error(exc)
        if cause is None:
            raise
        raise CLIError(f"{type(cause).__name__}: {cause}") from exc
    run = RunPaths.of(result.run_dir)
    console.write("")
    console.write(f"synthetic data : {result.dataset}")
    console.write(f"weights        : {'pretrained ' + args.plugin if result.pretrained else 'random initialisation'}")
    for line in run_summary(run.root, seed=args.seed, report=run.report_html,
                            next_command=f"cxrkit run inference {run.root} --input {result.dataset / 'COVID'}"):
        console.write(line)
    return 0
