"""``cxrkit compare-report RUN_DIR... --output_dir DIR``: one comparison report across run folders."""

from __future__ import annotations

import argparse
from pathlib import Path


def _skip(text: str) -> tuple[str, str]:
    plugin, sep, reason = text.partition("=")
    if not sep or not plugin.strip() or not reason.strip():
        raise argparse.ArgumentTypeError(f"expected PLUGIN=REASON, got {text!r}")
    return plugin.strip(), reason.strip()


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser(
        "compare-report",
        help="compare run folders trained on the same split (or k folds) in one report",
        description="Rank weight sources by validation accuracy (then macro F1) with 95%% bootstrap CIs: "
        "Table 5 and Table 6 across sources, combined loss/accuracy curves, confusion matrices, per-fold "
        "mean ± std for k-fold groups (same plugin, different folds). Warns when split manifests differ.",
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR", help="run folders to compare")
    add_common(p, "output_dir", "--out", required=True, help="the report's folder")
    add_common(p, "bootstrap")
    add_common(p, "seed", help="bootstrap seed (default: 0)")
    add_common(p, "positive_class", "--positive")
    add_option(p, "--skipped", type=_skip, action="append", default=[], metavar="PLUGIN=REASON",
               help="a source that was not trained and why (repeatable); listed in the report")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import warnings

    from cxrkit.cli import CLIError
    from cxrkit.report.compare import SplitMismatchWarning, write_comparison
    from cxrkit.report.runfolder import RunFolderError

    with warnings.catch_warnings():
        # a split mismatch is also logged at WARNING level (shown by default) and boxed in the report
        warnings.simplefilter("ignore", SplitMismatchWarning)
        try:
            md = write_comparison(args.run_dirs, args.output_dir, bootstrap=args.bootstrap, seed=args.seed,
                                  skipped=dict(args.skipped) or None, positive=args.positive_class)
        except (RunFolderError, ValueError) as exc:
            raise CLIError(str(exc)) from None
    print(f"wrote {md}")
    print(f"wrote {md.with_suffix('.html')}")
    return 0
