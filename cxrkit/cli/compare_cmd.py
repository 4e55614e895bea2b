"""``cxrkit compare``: train every chosen weight plugin on one split and write one comparison report."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer, number

    positive = arg_type(integer, minimum=1)
    p = sub.add_parser(
        "compare",
        usage="cxrkit compare --dataset_dir DIR [options] [--ADAPTER_OPTION VALUE ...]",
        help="train every weight plugin on one split (or k folds) and write one comparison report",
        description=(
            "Make ONE split of the dataset (written as split.json in the comparison folder), train every chosen "
            "plugin on it (fine-tuning through its bundle, or the same bundle run as a linear probe on cached "
            "backbone features) and write one comparison report. Plugins whose weight file is absent are listed "
            "as skipped with the `cxrkit weights import` command; a run that fails is reported and the others "
            "go on. Extra --name value arguments are passed to the dataset adapter as options (e.g. --views PA "
            "for cohen; see 'cxrkit data tasks')."
        ),
        epilog=(
            "examples:\n"
            "  cxrkit compare --dataset radiography --dataset_dir data/COVID-19_Radiography_Dataset\n"
            "  cxrkit compare --dataset_dir DIR --plugins imagenet,inat_swav,random --epochs 5\n"
            "  cxrkit compare --dataset_dir DIR --mode linear_probe --folds 5"
        ),
        formatter_class=CommandFormatter,
    )
    add_option(p, "--dataset", default="radiography", help="dataset adapter (default: radiography)")
    add_common(p, "dataset_dir", "--root", required=True)
    add_option(p, "--task", default=None, help="the dataset's task (default: the adapter's)")
    add_option(p, "--plugins", default="all", help="all, or comma-separated plugin names (default: all)")
    add_option(p, "--mode", choices=("finetune", "linear_probe"), default="finetune",
               help="finetune the whole network (default) or train a linear head on cached features")
    add_option(p, "--folds", type=positive, default=None, metavar="K", help="k-fold cross-validation with K folds")
    add_common(p, "output_dir", "--out", default=None,
               help="the comparison folder (default: runs/compare-<dataset>-<timestamp>)")
    add_common(p, "epochs", default=None, help="training epochs (default: 50)")
    add_common(p, "image_size", default=None, help="input size in pixels (default: each plugin's own)")
    add_common(p, "batch_size", default=None, help="images per batch (default: 32)")
    add_common(p, "seed", help="split and training seed (default: 0)")
    add_option(p, "--weights_dir", default=None, metavar="DIR",
               help="folder searched first for every plugin's weight file")
    add_option(p, "--max_items", type=positive, default=None, metavar="N", help="use at most N images (quick runs)")
    add_option(p, "--skip_bad_images", action="store_true",
               help="leave unreadable images out of the split (listed in each run's summary) instead of failing")
    add_option(p, "--allow_missing", action="store_true", help="leave out metadata rows whose image file is missing")
    add_option(p, "--val_fraction", type=arg_type(number, minimum=0.0, maximum=1.0), default=0.2, metavar="F",
               help="validation share of a hold-out split (default: 0.2)")
    add_option(p, "--test_fraction", type=arg_type(number, minimum=0.0, maximum=0.95), default=0.2, metavar="F",
               help="held-out test share, shared by every plugin and fold; the report ranks on it (default: 0.2; "
                    "0: none)")
    add_option(p, "--feature_cache", "--cache_dir", default=None, metavar="DIR",
               help="feature cache of --mode linear_probe (default: $CXRKIT_FEATURE_CACHE or ~/.cache/cxrkit/features)")
    add_common(p, "bootstrap")
    add_common(p, "device")
    add_common(p, "no_progress")
    add_common(p, "tracking", help="mlflow: one MLflow parent run, one child run per plugin (and fold)")
    add_common(p, "tracking_uri")
    add_common(p, "experiment_name")
    add_common(p, "run_name", help="with --tracking: the parent run's name (default: the comparison folder's name)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from cxrkit import console
    from cxrkit.cli import CLIError, adapter_options
    from cxrkit.data import DatasetError
    from cxrkit.engine.console import source_line
    from cxrkit.experiment.compare import CompareError, CompareSettings, RunOutcome, run_comparison

    options = adapter_options(args.overrides, args.allow_missing)
    settings = CompareSettings(
        dataset=args.dataset, dataset_dir=args.dataset_dir, task=args.task, plugins=[args.plugins], mode=args.mode,
        folds=args.folds, output_dir=args.output_dir, epochs=args.epochs, image_size=args.image_size,
        batch_size=args.batch_size, seed=args.seed, weights_dir=args.weights_dir, max_items=args.max_items,
        device=args.device, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        feature_cache=args.feature_cache, skip_bad_images=args.skip_bad_images, dataset_options=options,
        bootstrap=args.bootstrap, progress=args.progress, tracking=args.tracking, tracking_uri=args.tracking_uri,
        experiment_name=args.experiment_name, run_name=args.run_name,
    )

    def show(run: RunOutcome) -> None:  # one line per weight source as its run ends
        label = run.plugin + ("" if run.fold is None else f" fold {run.fold}")
        console.write(source_line(label, run.run_dir, run.status, run.seconds, run.error))

    try:
        result = run_comparison(settings, on_run=show)
    except (CompareError, DatasetError, ValueError) as exc:  # bad options or data: the message says what to fix
        raise CLIError(str(exc)) from exc
    for plugin, reason in result.skipped.items():
        console.write(source_line(plugin, "", "skipped", 0.0, reason))
    finished = [r.run_dir for r in result.runs if r.status == "finished"]
    console.write("")
    console.write(f"folder         : {result.out_dir} (runs/<source>/log.txt: each run's whole log)")
    console.write(f"split          : {', '.join(str(p) for p in result.splits)}")
    console.write(f"report         : {result.report}")
    console.write(f"next           : cxrkit report {finished[0]}   (one source's own report, with its audit)")
    return 1 if result.failed else 0
