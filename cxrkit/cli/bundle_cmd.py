"""``cxrkit bundle write|check|sync``: write a self-contained bundle; generate and check the repository's bundles/."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser(
        "bundle", help="write a MONAI bundle for any weight plugin; generate and check the repository's bundles/",
        description="Bundles come from one base config inside the cxrkit package and each plugin's WeightSource: "
                    "`write` makes a self-contained bundle of any weight plugin; `sync` writes the repository's "
                    "bundles/<plugin>/ for every plugin cxrkit ships and `check` fails when one differs.",
        epilog="examples:\n  cxrkit bundle write xrv_resnet50 --output_dir my_bundle\n"
               "  cxrkit bundle check\n  cxrkit bundle sync",
        formatter_class=CommandFormatter,
    )
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    write = bsub.add_parser(
        "write", help="write a self-contained bundle of a plugin (MONAI model-zoo layout) into a folder",
        description="Write a self-contained MONAI bundle of a weight plugin (built-in or installed by a third "
                    "party) into --output_dir. MONAI's own runner trains it, without cxrkit's command line: "
                    "python -m monai.bundle run training --config_file DIR/configs/train.yaml "
                    "--meta_file DIR/configs/metadata.json --dataset_dir DATA",
        epilog="example:\n  cxrkit bundle write xrv_resnet50 --output_dir my_bundle",
        formatter_class=CommandFormatter,
    )
    write.add_argument("plugin", help="weight plugin name (`cxrkit list weights`)")
    add_common(write, "output_dir", required=True, help="the bundle folder to write (new or empty)")
    add_option(write, "--overwrite", action="store_true",
               help="replace the bundle's files in a folder that holds files (nothing else is touched)")
    write.set_defaults(func=run_write)

    for name, helps in (
        ("check", "compare the repository's bundles/ with what `sync` writes (exit 1 naming each file that differs)"),
        ("sync", "write or refresh bundles/<plugin>/ for every weight source cxrkit ships (after editing the "
                 "templates or adding a WeightSource)"),
    ):
        q = bsub.add_parser(name, help=helps, description=helps + ". Covers every plugin cxrkit registers and any "
                            "other plugin's folder present; every file is generated, never edited by hand.",
                            formatter_class=CommandFormatter)
        add_option(q, "--bundles_dir", type=Path, default=None, metavar="DIR",
                   help="the bundles folder (default: the repository's bundles/)")
        if name == "sync":
            q.add_argument("plugins", nargs="*", metavar="PLUGIN", help="also add folders for these plugins")
        q.set_defaults(func=run_check if name == "check" else run_sync)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_write(args: argparse.Namespace) -> int:
    from cxrkit.bundle import write_bundle
    from cxrkit.cli import CLIError
    from cxrkit.registry import RegistryError

    try:
        folder = write_bundle(args.plugin, args.output_dir, overwrite=args.overwrite)
    except RegistryError as exc:
        raise CLIError(str(exc), code=2) from exc
    except OSError as exc:  # FileExistsError included
        raise CLIError(str(exc)) from exc
    print(f"wrote the {args.plugin} bundle: {folder}")
    print(f"  python -m monai.bundle run training --config_file {folder}/configs/train.yaml "
          f"--meta_file {folder}/configs/metadata.json --dataset_dir DIR")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.bundle.folders import check_bundles
    from cxrkit.cli import CLIError

    try:
        problems = check_bundles(args.bundles_dir)
    except BundleNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    for line in problems:
        print(line)
    if problems:
        raise CLIError("bundles are out of date: run `cxrkit bundle sync`")
    print("bundles are up to date")
    return 0


def run_sync(args: argparse.Namespace) -> int:
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.bundle.folders import sync_bundles
    from cxrkit.cli import CLIError
    from cxrkit.registry import RegistryError

    try:
        changed = sync_bundles(args.bundles_dir, args.plugins)
    except RegistryError as exc:
        raise CLIError(str(exc), code=2) from exc
    except BundleNotFoundError as exc:
        raise CLIError(str(exc)) from exc
    for path in changed:
        print(f"wrote {path}")
    print(f"{len(changed)} file(s) changed")
    return 0
