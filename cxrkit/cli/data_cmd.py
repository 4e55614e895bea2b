"""``cxrkit data check|tasks``: what a dataset folder holds, whether it reads, and whether a split leaks.

``cxrkit data check DATASET ROOT`` loads the dataset for a task, checks every
image, makes the split the training would make, and prints counts per class
and split, left-out and unreadable files, and the leakage audit. It exits with
1 when an image is unreadable or the split leaks. Adapter options are given as
``--name value`` (e.g. ``--views PA,AP`` for cohen, ``--label_column dx`` for csv).
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

_SHOW = 5  # file names shown per reason


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect datasets: tasks, counts, unreadable files, split leakage")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    c = dsub.add_parser(
        "check",
        help="count, read-check and split a dataset folder",
        description="Load DATASET from ROOT, check every image, split it and audit the split for leakage. "
        "Extra --name value arguments are passed to the adapter as options (see 'cxrkit data tasks').",
    )
    c.add_argument("dataset", help="dataset adapter: radiography, coronahack, cohen, folder, csv, or a plugin's")
    c.add_argument("root", help="the dataset folder (the CSV file for 'csv')")
    c.add_argument("--task", help="task (default: the adapter's default task)")
    c.add_argument("--allow_missing", action="store_true", help="leave out metadata rows whose image is missing")
    c.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    c.add_argument("--val_fraction", type=float, default=0.2, help="validation share (default 0.2)")
    c.add_argument("--folds", type=int, help="k-fold cross-validation instead of a hold-out split")
    c.add_argument("--fold", type=int, default=0, help="validation fold with --folds (default 0)")
    c.add_argument("--use_predefined", action="store_true", help="use the dataset's own train/test split")
    c.add_argument("--save_split", metavar="JSON", help="write the split manifest here")
    c.add_argument("--workers", type=int, help="threads for the image check")
    c.add_argument("--no_progress", action="store_true", help="no progress bar")
    c.set_defaults(func=run_check, accepts_overrides=True)

    t = dsub.add_parser("tasks", help="list the tasks and options of the dataset adapters")
    t.add_argument("dataset", nargs="?", help="one adapter only")
    t.set_defaults(func=run_tasks)


def parse_options(overrides: list[str]) -> dict:
    """``["--views", "PA,AP", "--balance", "false"]`` -> ``{"views": "PA,AP", "balance": False}``."""
    import yaml

    from cxrkit.cli import CLIError

    options, key = {}, None
    for token in overrides:
        if token.startswith("--"):
            if key is not None:
                options[key] = True
            key = token[2:].replace("-", "_")
            if "=" in key:
                key, value = key.split("=", 1)
                options[key], key = value, None
        elif key is None:
            raise CLIError(f"unexpected argument {token!r}; adapter options are --name value")
        else:
            try:
                value = yaml.safe_load(token)
            except yaml.YAMLError:
                value = token
            options[key] = value if isinstance(value, (bool, int, float)) else token
            key = None
    if key is not None:
        options[key] = True
    return options


def _print_excluded(spec) -> None:
    if not spec.excluded:
        print("left out by the adapter: none")
        return
    print("left out by the adapter:")
    for reason, names in spec.excluded.items():
        more = f", ... ({len(names) - _SHOW} more)" if len(names) > _SHOW else ""
        print(f"  {reason}: {len(names)} ({', '.join(names[:_SHOW])}{more})")


def run_check(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.cli.table import format_table
    from cxrkit.data import DatasetError, load_dataset
    from cxrkit.data.check import check_images
    from cxrkit.data.split import make_split
    from cxrkit.registry import RegistryError

    options = parse_options(args.overrides)
    if args.allow_missing:
        options["allow_missing"] = True
    try:
        spec = load_dataset(args.dataset, args.root, args.task, **options)
    except (DatasetError, RegistryError) as exc:
        raise CLIError(str(exc)) from None
    print(f"dataset {spec.name}, task {spec.task}, root {spec.root}")
    print(f"classes: {', '.join(spec.classes)}")
    _print_excluded(spec)

    checked = check_images(spec.items, skip_bad=True, progress=not args.no_progress, workers=args.workers)
    if checked.bad:
        print(f"unreadable images: {len(checked.bad)}")
        for path, reason in checked.bad:
            print(f"  {path}: {reason}")
    else:
        print("unreadable images: none")
    if not checked.good:
        raise CLIError("no readable image left")
    spec.items = checked.good

    try:
        split = make_split(
            spec, val_fraction=args.val_fraction, seed=args.seed, folds=args.folds, fold=args.fold,
            use_predefined=args.use_predefined,
        )
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    train, val = split.manifest["counts"]["train"], split.manifest["counts"]["val"]
    rows = [(c, train[c], val[c], train[c] + val[c]) for c in spec.classes]
    rows.append(("total", len(split.train), len(split.val), len(split.train) + len(split.val)))
    print(f"split: {split.manifest['strategy']}")
    print(format_table(["class", "train", "val", "total"], rows))
    print(split.audit.summary())
    if not split.audit.ok:
        for a, b in split.audit.duplicate_images[:10]:
            print(f"  identical files: {a} == {b}")
        for path in split.audit.overlap_images[:10]:
            print(f"  validation image of a patient also in training: {path}")
    if args.save_split:
        print(f"split manifest written to {split.save(args.save_split)}")
    return 1 if checked.bad or not split.audit.ok else 0


def run_tasks(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.registry import RegistryError, datasets

    names = [args.dataset] if args.dataset else datasets.names()
    for n, name in enumerate(names):
        try:
            adapter = datasets.get(name)
        except RegistryError as exc:
            if args.dataset:
                raise CLIError(str(exc)) from None
            print(f"{name}: unavailable ({exc})")
            continue
        print(("\n" if n else "") + f"{name}: {getattr(adapter, 'description', '')}")
        for task, text in getattr(adapter, "tasks", {}).items():
            default = " (default)" if task == getattr(adapter, "default_task", None) else ""
            print(f"  task {task}{default}: {text}")
        for option, text in getattr(adapter, "option_help", {}).items():
            print(f"  --{option}: {text}")
    return 0
