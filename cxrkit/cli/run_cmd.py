"""``cxrkit run training|evaluate|inference BUNDLE [--key value ...]``: run a bundle with MONAI's runner.

The short form of ``python -m monai.bundle run <id> --config_file BUNDLE/configs/<kind>.yaml``
(:func:`cxrkit.bundle.runner.run_bundle`): it takes a bundle folder
(``bundles/inat_swav``, a plugin name, or a run folder), sets ``--bundle_root``
to it and runs MONAI's ``ConfigWorkflow`` with the same overrides. Values are
parsed exactly as MONAI's command line (Python Fire) parses them, so both forms
behave alike; ``--image-size`` is ``--image_size``, and ``--no_progress`` (the
flag of every other command) is ``--progress false``.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["add_parser", "run"]

logger = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.bundle.runner import ALIASES, WORKFLOWS
    from cxrkit.options import CommandFormatter

    p = sub.add_parser(
        "run",
        help="train, evaluate or run inference with a MONAI bundle (any --key value overrides the config)",
        description=(
            "Run a bundle's training, evaluate or inference config with MONAI's bundle runner. Every "
            "--key value pair overrides the config, e.g. --dataset_dir DIR --epochs 3 --loss focal "
            "--output_dir runs/x --device cpu; nested ids with '#': --train#trainer#max_epochs 2."
        ),
        epilog=(
            "examples:\n  cxrkit run training bundles/inat_swav --dataset_dir data/COVID-19_Radiography_Dataset\n"
            "  cxrkit run training bundles/inat_swav --resume runs/inat_swav-20240101-120000\n"
            "  cxrkit run training bundles/inat_swav --dataset_dir DIR --mode linear_probe --head linear "
            "--freeze_until all\n"
            "  cxrkit run evaluate runs/inat_swav-20240101-120000 --dataset_dir DIR --subset val\n"
            "  cxrkit run inference runs/inat_swav-20240101-120000 --input xray.png"
        ),
        formatter_class=CommandFormatter,
    )
    p.add_argument("workflow", choices=sorted(set(WORKFLOWS) | set(ALIASES)), metavar="WORKFLOW",
                   help="training | evaluate | inference")
    p.add_argument("bundle", help="bundle folder (bundles/<plugin>), plugin name, or run folder")
    p.set_defaults(func=run, accepts_overrides=True)


def run(args: argparse.Namespace) -> int:
    from cxrkit import console
    from cxrkit.api import run_bundle, user_error
    from cxrkit.bundle.runner import workflow_name
    from cxrkit.bundle import BundleNotFoundError
    from cxrkit.cli import CLIError
    from cxrkit.options import parse_overrides

    try:
        overrides = parse_overrides(args.overrides)
    except ValueError as exc:
        raise CLIError(str(exc), code=2) from None
    if "no_progress" in overrides:  # the flag every other command takes; the config's id is `progress`
        if overrides.pop("no_progress") is not True or "progress" in overrides:
            raise CLIError("--no_progress takes no value and cannot be combined with --progress", code=2)
        overrides["progress"] = False
    try:
        written = run_bundle(args.workflow, args.bundle, overrides)
    except (BundleNotFoundError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - show the user's mistake, not MONAI's wrapper
        cause = user_error(exc)
        if cause is None:
            raise
        logger.debug("bundle failed", exc_info=exc)
        raise CLIError(f"{type(cause).__name__}: {cause}") from exc
    if workflow_name(args.workflow) != "training" and written is not None:  # training printed its own summary
        console.write(f"wrote {written}")
    return 0
