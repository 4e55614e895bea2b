"""``cxrkit demo``: synthetic data, a short training run of the inat_swav bundle, an evaluation."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="train and evaluate on a small synthetic dataset (minutes on a CPU, no download)",
        description=(
            "Create a small synthetic chest-X-ray-like dataset (COVID vs Normal, Radiography layout), train the "
            "inat_swav bundle on it for a few epochs at low resolution, evaluate the run and print where the "
            "results are. Uses the plugin's pretrained weights when installed, random initialisation otherwise."
        ),
    )
    p.add_argument("--dir", default="runs/demo", help="work folder for data and runs (default: runs/demo)")
    p.add_argument("--plugin", default="inat_swav", help="weight plugin whose bundle is trained (default inat_swav)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--per-class", type=int, default=50, help="synthetic images per class (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.cli import CLIError
    from cxrkit.cli.run_cmd import user_error
    from cxrkit.demo import run_demo, weights_available
    from cxrkit.weights import get_source

    source = get_source(args.plugin)
    if source.pretrained and not weights_available(args.plugin):
        print(
            f"The '{args.plugin}' weight file ({source.filenames[0]}) is not installed, so the demo trains from "
            f"RANDOM initialisation. To use the pretrained weights, get the file from {source.origin} and run:\n"
            f"  {source.import_command()}\n"
        )
    try:
        result = run_demo(
            args.dir, plugin=args.plugin, epochs=args.epochs, image_size=args.image_size,
            batch_size=args.batch_size, per_class=args.per_class, seed=args.seed, device=args.device,
            progress=not args.no_progress,
        )
    except BundleNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - show the user's mistake, not MONAI's wrapper
        cause = user_error(exc)
        if cause is None:
            raise
        raise CLIError(f"{type(cause).__name__}: {cause}") from exc
    metrics, evaluation = result.metrics, result.evaluation
    best = next((r for r in metrics["epochs"] if r["epoch"] == metrics["best_epoch"]), metrics["epochs"][-1])
    ev = evaluation["metrics"]
    print(f"\nsynthetic data : {result.dataset}")
    print(f"weights        : {'pretrained ' + args.plugin if result.pretrained else 'random initialisation'}")
    print(f"run folder     : {result.run_dir}")
    print(f"best epoch     : {metrics['best_epoch']} of {len(metrics['epochs'])} "
          f"(val_accuracy {best['val_accuracy']:.3f}, val_auc {best['val_auc']:.3f})")
    print(f"evaluation     : accuracy {ev['accuracy']:.3f}, ROC AUC {ev['auc']:.3f} on {evaluation['n_images']} "
          f"validation images -> {result.run_dir / 'evaluation' / 'metrics.json'}")
    print(f"model          : {result.run_dir / 'models' / 'model.pt'}")
    print(f"report         : {result.run_dir / 'report' / 'report.html'} (and report.md)")
    print(f"TensorBoard    : tensorboard --logdir {result.run_dir / 'tensorboard'}")
    print(f"next           : cxrkit run inference {result.run_dir} --input {result.dataset / 'COVID'}")
    return 0
