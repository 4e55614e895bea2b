"""``cxrkit external RUN_DIR``: evaluate a trained run on another collection (external validation)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer

    p = sub.add_parser(
        "external",
        usage="cxrkit external RUN_DIR --dataset NAME --dataset_dir DIR [options] [--ADAPTER_OPTION VALUE ...]",
        help="evaluate a run on another collection, its classes mapped onto the run's (external validation)",
        description=(
            "Evaluate a trained run's best model on another collection (radiography, coronahack, cohen, folder, "
            "csv), mapping that collection's classes onto the run's with --class_map; classes left out of the map "
            "are left out of the evaluation. Writes RUN_DIR/external/NAME/predictions.csv and metrics.json and "
            "prints the accuracy with a 95% bootstrap interval next to the run's own test part. cxrkit report and "
            "cxrkit compare-report show internal and external results side by side. Extra --name value arguments are "
            "passed to the adapter as options (e.g. --views PA for cohen; see 'cxrkit data tasks')."
        ),
        epilog=(
            "examples:\n"
            "  cxrkit external runs/x --dataset cohen --dataset_dir data/covid-chestxray-dataset --task covid_vs_normal"
            " --class_map 'COVID-19=COVID,No Finding=Normal'\n"
            "  cxrkit external runs/x --dataset coronahack --dataset_dir data/coronahack --task covid_vs_normal "
            "--class_map 'COVID-19=COVID,Normal=Normal' --allow_missing"
        ),
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    add_option(p, "--dataset", required=True, help="the other collection's adapter (cxrkit data tasks)")
    add_common(p, "dataset_dir", required=True, help="the other collection's folder")
    add_option(p, "--task", default=None, help="its task (default: the adapter's)")
    add_option(p, "--class_map", default=None, metavar="MAP",
               help="DATASET_CLASS=RUN_CLASS,... e.g. 'COVID-19=COVID,No Finding=Normal' (default: same names)")
    add_option(p, "--name", default=None, help="name of this evaluation (default: DATASET or DATASET-TASK)")
    add_option(p, "--allow_missing", action="store_true", help="leave out metadata rows whose image file is missing")
    add_option(p, "--max_items", type=arg_type(integer, minimum=1), default=None, metavar="N",
               help="evaluate at most N images, class-stratified")
    add_option(p, "--skip_bad_images", action="store_true", help="leave unreadable images out instead of failing")
    add_common(p, "bootstrap")
    add_common(p, "device")
    add_common(p, "no_progress")
    add_common(p, "tracking", help="mlflow: log the evaluation as an MLflow run, a child of the run's training run")
    add_common(p, "tracking_uri", help="with --tracking: the MLflow store or server (default: the run's, mlruns.db "
                                       "beside the run folder)")
    add_common(p, "experiment_name")
    add_common(p, "run_name", help="with --tracking: the MLflow run's name (default: RUN-external-NAME)")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cxrkit import console
    from cxrkit.api import external
    from cxrkit.bundle.runner import user_error
    from cxrkit.cli import CLIError, adapter_options
    from cxrkit.cli.table import format_table
    from cxrkit.report.report import evaluate_run
    from cxrkit.report.runfolder import RunFolderError, load_run
    from cxrkit.report.trust import with_ci
    from cxrkit.runfolder import RunPaths

    from cxrkit.tracking import TrackingError, check_tracking, log_external

    options = adapter_options(args.overrides)
    try:
        tracking = check_tracking(args.tracking)
    except TrackingError as exc:
        raise CLIError(str(exc)) from None
    paths = RunPaths.of(args.run_dir)
    if not paths.evaluate_config.is_file():
        raise CLIError(f"{paths.root}: not a run folder (no configs/evaluate.yaml); pass the folder training wrote")
    overrides = {"device": args.device, "progress": bool(args.progress), "skip_bad_images": bool(args.skip_bad_images)}
    if args.max_items:
        overrides["max_items"] = int(args.max_items)
    try:
        folder = external(paths.root, args.dataset, args.dataset_dir, class_map=args.class_map, task=args.task,
                          name=args.name, allow_missing=args.allow_missing, dataset_options=options, **overrides)
    except RunFolderError as exc:
        raise CLIError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - show the user's mistake, not MONAI's wrapper
        cause = user_error(exc) or (exc if isinstance(exc, ValueError) else None)
        if cause is None:
            raise
        raise CLIError(f"{type(cause).__name__}: {cause}") from exc
    try:
        run = load_run(paths.root)
    except RunFolderError as exc:
        raise CLIError(str(exc)) from None
    rows = []
    for split in [s for s in run.splits if s != "validation"]:
        ev = evaluate_run(run, bootstrap=args.bootstrap, split=split)
        rows.append([split, str(ev.metrics.n), with_ci(ev, "accuracy"), f"{ev.metrics.macro['f1']:.4f}"])
    for line in format_table(["split", "images", "accuracy (95% CI)", "macro F1"], rows).splitlines():
        console.write(line)
    console.write("")
    console.write(f"wrote          : {folder}")
    console.write(f"log            : {Path(folder) / console.LOG_FILE}")
    console.write(f"next           : cxrkit report {paths.root}   (internal and external results side by side)")
    if tracking:
        try:
            run_id = log_external(paths.root, folder, {"dataset": args.dataset, "task": args.task,
                                                       "class_map": args.class_map, "max_items": args.max_items},
                                  args.tracking_uri, args.experiment_name, args.run_name, args.bootstrap)
        except TrackingError as exc:
            raise CLIError(str(exc)) from None
        if run_id:
            console.write(f"MLflow run     : {run_id}")
    return 0
