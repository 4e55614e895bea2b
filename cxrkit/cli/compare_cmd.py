"""``cxrkit compare``: train every chosen weight plugin on one split and write one comparison report."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="train every weight plugin on one split (or k folds) and write one comparison report",
        description=(
            "Make ONE split of the dataset (written as split.json in the comparison folder), train every chosen "
            "plugin on it (fine-tuning through its bundle, or a linear probe on cached backbone features) and "
            "write one comparison report. Plugins whose weight file is absent are listed as skipped with the "
            "`cxrkit weights import` command; a run that fails is reported and the others go on."
        ),
        epilog=(
            "examples:\n"
            "  cxrkit compare --dataset radiography --root data/COVID-19_Radiography_Dataset\n"
            "  cxrkit compare --dataset radiography --root DIR --plugins imagenet,inat_swav,random --epochs 5\n"
            "  cxrkit compare --dataset radiography --root DIR --mode linear_probe --folds 5"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dataset", default="radiography", help="dataset adapter (default: radiography)")
    p.add_argument("--root", required=True, help="the dataset folder")
    p.add_argument("--task", default=None, help="the dataset's task (default: the adapter's)")
    p.add_argument("--plugins", default="all", help="all, or comma-separated plugin names (default: all)")
    p.add_argument("--mode", choices=("finetune", "linear_probe"), default="finetune",
                   help="finetune the whole network (default) or train a linear head on cached features")
    p.add_argument("--folds", type=_positive, default=None, help="k-fold cross-validation with K folds")
    p.add_argument("--out", default=None, help="comparison folder (default: runs/compare-<dataset>-<timestamp>)")
    p.add_argument("--epochs", type=_positive, default=None, help="training epochs (default: 50)")
    p.add_argument("--image_size", type=_positive, default=None, help="input size (default: each plugin's own)")
    p.add_argument("--batch_size", type=_positive, default=None, help="batch size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="split and training seed (default: 0)")
    p.add_argument("--weights_dir", default=None, help="folder searched first for every plugin's weight file")
    p.add_argument("--max_items", type=_positive, default=None, help="use at most N images (quick runs)")
    p.add_argument("--val_fraction", type=float, default=0.2, help="validation share of a hold-out split")
    p.add_argument("--cache_dir", default=None,
                   help="feature cache of --mode linear_probe (default: ~/.cache/cxrkit/features)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the report's CIs")
    p.add_argument("--device", nargs="?", const="cuda", default="auto",
                   help="auto (default), cpu, cuda or cuda:N; a bare --device means cuda")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.cli.table import format_table
    from cxrkit.data import DatasetError
    from cxrkit.experiment.compare import CompareError, CompareSettings, run_comparison

    settings = CompareSettings(
        dataset=args.dataset, root=args.root, task=args.task, plugins=[args.plugins], mode=args.mode,
        folds=args.folds, out=args.out, epochs=args.epochs, image_size=args.image_size, batch_size=args.batch_size,
        seed=args.seed, weights_dir=args.weights_dir, max_items=args.max_items, device=args.device,
        val_fraction=args.val_fraction, cache_dir=args.cache_dir, bootstrap=args.bootstrap,
        progress=not args.no_progress,
    )
    try:
        result = run_comparison(settings)
    except (CompareError, DatasetError, ValueError) as exc:  # bad options or data: the message says what to fix
        raise CLIError(str(exc)) from exc
    rows = [[r.plugin, "-" if r.fold is None else str(r.fold), r.status, f"{r.seconds:.1f}s",
             r.run_dir if r.status == "finished" else (r.error or "")] for r in result.runs]
    rows += [[plugin, "-", "skipped", "", reason] for plugin, reason in result.skipped.items()]
    print(format_table(["plugin", "fold", "status", "time", "run folder / reason"], rows))
    print(f"split: {', '.join(str(p) for p in result.splits)}")
    print(f"report: {result.report}")
    return 1 if result.failed else 0
