"""The ``cxrkit`` command line.

Each subcommand lives in its own module under ``cxrkit.cli`` and exposes
``add_parser(subparsers)``, which adds its parser and sets ``func`` (called with
the parsed namespace, returning an exit code). Adding a subcommand is one new
module plus one line in :data:`COMMANDS`. Modules import heavy libraries inside
their ``func`` so ``cxrkit --help`` stays fast.

Options follow one vocabulary (:mod:`cxrkit.options`): ``--words_with_underscores``
as the config ids, each also accepted with hyphens, declared with
:func:`cxrkit.options.add_option` / :func:`cxrkit.options.add_common`.
The CLI is a thin layer: every command calls the Python API (:mod:`cxrkit.api`)
or the library module that owns the work; nothing outside ``cxrkit.cli``
imports from it.

A subcommand that accepts free-form overrides (``--any#config#key value``) sets
``accepts_overrides=True`` as a parser default; the unparsed arguments are then
passed on as ``args.overrides``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import Sequence

from cxrkit import __version__, console

__all__ = ["main", "build_parser", "COMMANDS", "CLIError", "adapter_options"]

#: subcommand name -> module that defines ``add_parser``.
COMMANDS: dict[str, str] = {
    "list": "cxrkit.cli.list_cmd",
    "data": "cxrkit.cli.data_cmd",
    "report": "cxrkit.cli.report_cmd",
    "compare-report": "cxrkit.cli.compare_report_cmd",
    "compare": "cxrkit.cli.compare_cmd",
    "weights": "cxrkit.cli.weights_cmd",
    "run": "cxrkit.cli.run_cmd",
    "bundle": "cxrkit.cli.bundle_cmd",
    "demo": "cxrkit.cli.demo_cmd",
    "predict": "cxrkit.cli.predict_cmd",
    "export": "cxrkit.cli.export_cmd",
    "label": "cxrkit.cli.label_cmd",
    "review": "cxrkit.cli.review_cmd",
    "bench": "cxrkit.cli.bench_cmd",
    "audit": "cxrkit.cli.audit_cmd",
    "calibrate": "cxrkit.cli.calibrate_cmd",
    "external": "cxrkit.cli.external_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxrkit",
        description="Fine-tune chest X-ray classifiers from many pretrained-weight sources.",
    )
    parser.add_argument("--version", action="version", version=f"cxrkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="the whole log on the console (also after COMMAND); -vv: debug")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # -v after COMMAND too (--verbose there is a config override of the commands that take them: --verbose true)
    flags = ("-v", "-vv") if getattr(args, "accepts_overrides", False) else ("-v", "-vv", "--verbose")
    args.verbose += sum(2 if e == "-vv" else 1 for e in extra if e in flags)
    extra = [e for e in extra if e not in flags]
    console.set_verbose(args.verbose > 0)  # the whole log on the console too (else only in the run's log.txt)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    if extra and not getattr(args, "accepts_overrides", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = list(extra)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM during a training run (cxrkit.engine.record.Terminated)
        signum = int(getattr(exc, "signum", 2))
        print("interrupted" if signum == 2 else f"terminated ({exc})", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # `cxrkit ... | head`: the reader went away; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CLIError as exc:
        print(f"cxrkit {args.command}: error: {exc}", file=sys.stderr)
        return exc.code


class CLIError(Exception):
    """An error shown to the user as one message (no traceback)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def adapter_options(tokens: Sequence[str], allow_missing: bool = False) -> dict:
    """The dataset adapter's options from a command's extra ``--name value`` arguments (and ``--allow_missing``).

    Raises:
        CLIError: a token that is not ``--name [value]`` (exit code 2).
    """
    from cxrkit.options import parse_overrides

    try:
        options = parse_overrides(tokens)
    except ValueError as exc:
        raise CLIError(f"{exc}; adapter options are --name value", code=2) from None
    if allow_missing:
        options["allow_missing"] = True
    return options
