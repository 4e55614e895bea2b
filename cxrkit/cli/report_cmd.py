"""``cxrkit report RUN_DIR``: the study's tables and figures, with bootstrap CIs, for one run folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser(
        "report",
        help="write report.md / report.html with tables, figures and 95%% CIs for a run folder",
        description="Read a finished run folder and write report.md (PNG figures beside it) and a "
        "self-contained report.html: run identity, headline metrics and Table 5 on the held-out test part, "
        "results by split (validation, test, external collections), sensitivity/specificity, ROC AUC, confusion "
        "matrix, calibration (ECE, reliability diagram), the shortcut audit, near-duplicate images, loss/accuracy "
        "curves, Table 6 accuracy summary, bootstrap 95%% CIs.",
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (runs/<plugin>-<timestamp>/)")
    add_common(p, "output_dir", "--out", default=None, help="the report's folder (default: RUN_DIR/report)")
    add_common(p, "bootstrap")
    add_common(p, "seed", help="bootstrap seed (default: 0)")
    add_common(p, "positive_class", "--positive",
               help="positive class name or index (default: the run's positive_class, else class 0 when binary)")
    add_option(p, "--audit", choices=("auto", "true", "false"), default="auto",
               help="shortcut audit section: auto (default: use RUN_DIR/audit, run `cxrkit audit` first when it is "
                    "missing and the model and dataset are there), true (run it again), false (leave it out)")
    add_common(p, "dataset_dir", default=None,
               help="where the run's dataset is now, for the audit (default: the root in split.json)")
    add_common(p, "device", help="device of the audit: auto (default: CUDA when available), cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.report.report import write_report
    from cxrkit.report.runfolder import RunFolderError

    try:
        md = write_report(args.run_dir, args.output_dir, bootstrap=args.bootstrap, seed=args.seed,
                          positive=args.positive_class, audit=args.audit,
                          audit_options={"dataset_dir": args.dataset_dir, "device": args.device})
    except (RunFolderError, ValueError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {md}")
    print(f"wrote {md.with_suffix('.html')}")
    return 0
