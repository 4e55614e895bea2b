"""``cxrkit report RUN_DIR``: the study's tables and figures, with bootstrap CIs, for one run folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write report.md / report.html with tables, figures and 95%% CIs for a run folder",
        description="Read a finished run folder and write report.md (PNG figures beside it) and a "
        "self-contained report.html: run identity, Table 5 per-class scores, sensitivity/specificity, "
        "ROC AUC, confusion matrix, loss/accuracy curves, Table 6 accuracy summary, bootstrap 95%% CIs.",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (runs/<plugin>-<timestamp>/)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="output folder (default: RUN_DIR/report)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                   help="bootstrap resamples for the confidence intervals; 0 switches them off (default: 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default: 0)")
    p.add_argument("--positive", default=None, metavar="CLASS",
                   help="positive class name or index (default: the run's positive_class, else class 0 when binary)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.report.report import write_report
    from cxrkit.report.runfolder import RunFolderError

    if args.bootstrap < 0:
        raise CLIError(f"--bootstrap must be >= 0, got {args.bootstrap}")
    try:
        md = write_report(args.run_dir, args.out, bootstrap=args.bootstrap, seed=args.seed, positive=args.positive)
    except (RunFolderError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {md}")
    print(f"wrote {md.with_suffix('.html')}")
    return 0
