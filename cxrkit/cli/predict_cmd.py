"""``cxrkit predict MODEL FILE_OR_DIR...``: class probabilities for images, with Grad-CAM overlays."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser(
        "predict",
        help="class probabilities for PNG/JPEG/DICOM/NIfTI files from a trained run (Grad-CAM with --cam)",
        description=(
            "Predict the class of each image with a trained model: a run folder (or any bundle with "
            "models/model.pt), or an exported TorchScript model.ts. The network and the preprocessing come "
            "from the bundle's configs/inference.yaml. Folders are searched for image files. A file that "
            "cannot be read is reported by name and skipped; the exit code is then 1."
        ),
        epilog=(
            "examples:\n  cxrkit predict runs/inat_swav-20240101-120000 xray.png scan.dcm\n"
            "  cxrkit predict runs/inat_swav-20240101-120000 studies/ --json > predictions.json\n"
            "  cxrkit predict runs/inat_swav-20240101-120000 xray.png --cam cams/\n"
            "  cxrkit predict runs/inat_swav-20240101-120000/models/model.ts xray.png"
        ),
        formatter_class=CommandFormatter,
    )
    p.add_argument("model", metavar="RUN_DIR_OR_BUNDLE_OR_TS",
                   help="run folder, bundle folder with models/model.pt, or an exported .ts file")
    p.add_argument("inputs", nargs="+", metavar="FILE_OR_DIR", help="image files or folders of images")
    add_option(p, "--json", action="store_true", help="print JSON instead of a table")
    add_option(p, "--cam", metavar="DIR", default=None,
               help="write a Grad-CAM overlay PNG per image (<name>_cam.png) into DIR")
    add_common(p, "batch_size", default=8, help="images per forward pass (default: 8)")
    add_common(p, "device")
    add_common(p, "trust_weights", "--trust",
               help="open a model.pt that needs full unpickling (runs code: only files you trust)")
    add_common(p, "no_progress", help="no progress bar")
    p.set_defaults(func=run)


_FILE_WIDTH = 60


def _short(path: str) -> str:
    """A long path shortened from the left, so the file name stays visible."""
    return path if len(path) <= _FILE_WIDTH else "…" + path[-(_FILE_WIDTH - 1):]


def _table(result) -> str:
    from cxrkit.cli.table import format_table

    headers = ["file", "prediction", "probability", *[f"p({c})" for c in result.classes]]
    rows = [
        [_short(p.file), p.label, f"{p.probability:.4f}", *[f"{p.probabilities[c]:.4f}" for c in result.classes]]
        for p in result.predictions
    ]
    return format_table(headers, rows, max_width=_FILE_WIDTH)


def run(args: argparse.Namespace) -> int:
    import logging
    import warnings

    from cxrkit.api import ModelLoadError, Predictor
    from cxrkit.cli import CLIError
    from cxrkit.serve.gradcam import CAMError

    logging.getLogger("cxrkit.serve.predict").setLevel(logging.ERROR)  # failures are printed below
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", message="parsing config_file")
            predictor = Predictor.load(args.model, device=args.device, trust=args.trust_weights)
            result = predictor.predict(args.inputs, batch_size=args.batch_size, cam_dir=args.cam,
                                       progress=args.progress and not args.json)
    except (ModelLoadError, CAMError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        if result.predictions:
            print(_table(result))
            print(f"\n{result.calibration}" if result.calibration else
                  "\nprobabilities as trained (not calibrated; `cxrkit calibrate RUN_DIR` fits a temperature)")
        if args.cam and result.predictions:
            print(f"\nGrad-CAM overlays in {args.cam}")
    for failure in result.failures:
        print(f"cxrkit predict: skipped {failure.file}: {failure.reason}", file=sys.stderr)
    if result.failures:
        print(f"cxrkit predict: {len(result.failures)} of {len(result.failures) + len(result.predictions)} "
              "inputs could not be predicted", file=sys.stderr)
        return 1
    return 0
