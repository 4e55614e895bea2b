"""``cxrkit calibrate RUN_DIR``: fit a temperature on the validation predictions (calibration.json)."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter

    p = sub.add_parser(
        "calibrate",
        help="fit temperature scaling on a run's validation predictions; predict/label/review then use it",
        description=(
            "Fit one temperature on the run's validation predictions (predictions.csv) by minimising their "
            "negative log-likelihood, and write RUN_DIR/calibration.json. No prediction changes; only how "
            "confident it is. cxrkit predict, cxrkit run inference, the MONAI Label server and the review page "
            "then show calibrated probabilities; cxrkit report shows the expected calibration error on the "
            "held-out test part before and after. Delete calibration.json to go back."
        ),
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.calibration import CalibrationError
    from cxrkit.cli import CLIError
    from cxrkit.engine.finish import calibrate_run
    from cxrkit.report.runfolder import RunFolderError

    try:
        calibration = calibrate_run(args.run_dir)
    except (RunFolderError, CalibrationError) as exc:
        raise CLIError(str(exc)) from None
    print(calibration.describe())
    print(f"validation ECE {calibration.ece_before:.4f} -> {calibration.ece_after:.4f}, "
          f"NLL {calibration.nll_before:.4f} -> {calibration.nll_after:.4f}")
    print(f"wrote {args.run_dir}/calibration.json")
    return 0
