"""``cxrkit data check|tasks``: what a dataset folder holds, whether it reads, and whether a split leaks.

``cxrkit data check --dataset NAME --dataset_dir DIR`` loads the dataset for a
task, checks every image, hashes every image (near-duplicate copies), makes the
split the training would make (train / validation / held-out test), and prints
counts per class and part, left-out and unreadable files, the leakage audit and
near-duplicate pairs across parts and across classes. It exits with 1 when an
image is unreadable or the split leaks. Adapter
options are given as ``--name value`` (e.g. ``--views PA,AP`` for cohen,
``--label_column dx`` for csv). The older form ``cxrkit data check DATASET ROOT``
still works.
"""

from __future__ import annotations

import argparse
import logging

logger = logging.getLogger(__name__)

_SHOW = 5  # file names shown per reason


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer, number

    p = sub.add_parser("data", help="inspect datasets: tasks, counts, unreadable files, split leakage")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    c = dsub.add_parser(
        "check",
        help="count, read-check and split a dataset folder",
        usage="cxrkit data check [--dataset NAME] --dataset_dir DIR [options] [--ADAPTER_OPTION VALUE ...]",
        description="Load the dataset, check every image, split it and audit the split for leakage. Extra "
        "--name value arguments are passed to the adapter as options (see 'cxrkit data tasks'). The older form "
        "'cxrkit data check DATASET ROOT' still works.",
        formatter_class=CommandFormatter,
    )
    add_option(c, "--dataset", default=None,
               help="dataset adapter: radiography (default), coronahack, cohen, folder, csv, or a plugin's")
    add_common(c, "dataset_dir", "--root", help="the dataset folder (the CSV file for 'csv')")
    add_option(c, "--task", help="task (default: the adapter's default task)")
    add_option(c, "--allow_missing", action="store_true", help="leave out metadata rows whose image is missing")
    add_common(c, "seed", help="split seed (default 0)")
    add_option(c, "--val_fraction", type=arg_type(number, minimum=0.0, maximum=1.0), default=0.2, metavar="F",
               help="validation share (default 0.2)")
    add_option(c, "--test_fraction", type=arg_type(number, minimum=0.0, maximum=0.95), default=0.2, metavar="F",
               help="held-out test share (default 0.2; 0: none)")
    add_option(c, "--no_near_duplicates", dest="near_duplicates", action="store_false",
               help="skip the perceptual-hash near-duplicate check (faster on huge collections)")
    add_option(c, "--folds", type=arg_type(integer, minimum=1), metavar="K",
               help="k-fold cross-validation instead of a hold-out split")
    add_option(c, "--fold", type=arg_type(integer, minimum=0), default=0, metavar="K",
               help="validation fold with --folds (default 0)")
    add_option(c, "--use_predefined", action="store_true", help="use the dataset's own train/test split")
    add_option(c, "--save_split", metavar="JSON", help="write the split manifest here")
    add_option(c, "--workers", type=arg_type(integer, minimum=1), metavar="N", help="threads for the image check")
    add_common(c, "no_progress")
    c.set_defaults(func=run_check, accepts_overrides=True)

    t = dsub.add_parser("tasks", help="list the tasks and options of the dataset adapters")
    t.add_argument("dataset", nargs="?", help="one adapter only")
    t.set_defaults(func=run_tasks)


def _dataset_and_options(args: argparse.Namespace) -> tuple[str, str, dict]:
    """``(dataset, dataset folder, adapter options)``; leading bare words are the old ``DATASET ROOT`` form."""
    from cxrkit.cli import CLIError, adapter_options

    tokens = list(args.overrides)
    legacy = []
    while tokens and not tokens[0].startswith("--") and len(legacy) < 2:
        legacy.append(tokens.pop(0))
    dataset = args.dataset or (legacy[0] if legacy else "radiography")
    root = args.dataset_dir or (legacy[1] if len(legacy) > 1 else None)
    if (args.dataset and legacy) or (args.dataset_dir and len(legacy) > 1):
        raise CLIError("give the dataset as --dataset NAME --dataset_dir DIR or as DATASET ROOT, not both", code=2)
    if root is None:
        raise CLIError("the dataset folder is required: --dataset_dir DIR", code=2)
    return dataset, root, adapter_options(tokens, args.allow_missing)


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

    dataset, root, options = _dataset_and_options(args)
    try:
        spec = load_dataset(dataset, root, args.task, **options)
    except (DatasetError, RegistryError) as exc:
        raise CLIError(str(exc)) from None
    print(f"dataset {spec.name}, task {spec.task}, root {spec.root}")
    print(f"classes: {', '.join(spec.classes)}")
    _print_excluded(spec)

    checked = check_images(spec.items, skip_bad=True, progress=args.progress, workers=args.workers)
    if checked.bad:
        print(f"unreadable images: {len(checked.bad)}")
        for path, reason in checked.bad:
            print(f"  {path}: {reason}")
    else:
        print("unreadable images: none")
    if not checked.good:
        raise CLIError("no readable image left")
    spec.items = checked.good

    hashes = None
    if args.near_duplicates:
        from cxrkit.data.neardup import hash_images

        hashes = hash_images([i["image"] for i in spec.items], progress=args.progress, workers=args.workers)
    try:
        split = make_split(
            spec, val_fraction=args.val_fraction, seed=args.seed, folds=args.folds, fold=args.fold,
            use_predefined=args.use_predefined, test_fraction=args.test_fraction, hashes=hashes,
        )
    except DatasetError as exc:
        raise CLIError(str(exc)) from None
    counts = split.manifest["counts"]
    train, val, test = counts["train"], counts["val"], counts.get("test") or {}
    rows = [(c, train[c], val[c], test.get(c, 0), train[c] + val[c] + test.get(c, 0)) for c in spec.classes]
    rows.append(("total", len(split.train), len(split.val), len(split.test),
                 len(split.train) + len(split.val) + len(split.test)))
    print(f"split: {split.manifest['strategy']}")
    if split.manifest.get("test_note"):
        print(f"note: {split.manifest['test_note']}")
    print(format_table(["class", "train", "val", "test", "total"], rows))
    print(split.audit.summary())
    _print_audit(split)
    if args.save_split:
        print(f"split manifest written to {split.save(args.save_split)}")
    return 1 if checked.bad or not split.audit.ok else 0


def _print_audit(split) -> None:
    audit = split.audit
    for a, b in audit.duplicate_images[:10]:
        print(f"  identical files: {a} == {b}")
    for path in audit.overlap_images[:10]:
        print(f"  validation/test image of a patient also in an earlier part: {path}")
    if audit.near_duplicate_threshold is None:
        print("near-duplicates: not checked (--no_near_duplicates)")
        return
    groups = split.manifest.get("near_duplicate_groups") or 0
    print(f"near-duplicates (perceptual hash, <= {audit.near_duplicate_threshold} of 256 bits): "
          f"{len(audit.near_duplicates)} pair(s) across parts, {len(audit.near_duplicates_across_classes)} "
          f"across classes; {groups} group(s) of copies kept in one part")
    for pair in audit.near_duplicates[:10]:
        print(f"  copy across parts ({' / '.join(pair['parts'])}, {pair['distance']} bits): {pair['a']} ~ {pair['b']}")
    for pair in audit.near_duplicates_across_classes[:10]:
        print(f"  copy with another class ({' / '.join(pair['classes'])}, {pair['distance']} bits): "
              f"{pair['a']} ~ {pair['b']}")


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
