"""``cxrkit export RUN_DIR``: the trained network as TorchScript, through MONAI's ``ckpt_export``."""

from __future__ import annotations

import argparse
import shlex


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser(
        "export",
        help="export a run's trained network to TorchScript (models/model.ts) with MONAI's ckpt_export",
        description=(
            "Write RUN_DIR/models/model.ts with `python -m monai.bundle ckpt_export network_def ...`: the network "
            "from configs/inference.yaml, the weights from models/model.pt, metadata.json and the inference "
            "config embedded as extra files. torch.jit.script is tried first, then torch.jit.trace. The exported "
            "module is checked against model.pt on a random batch."
        ),
        epilog="example:\n  cxrkit export runs/inat_swav-20240101-120000\n"
               "  cxrkit predict runs/inat_swav-20240101-120000/models/model.ts xray.png",
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a trained run folder (runs/<plugin>-<timestamp>)")
    add_common(p, "output_file", "--out", default=None, help="the TorchScript file (default: RUN_DIR/models/model.ts)")
    how = p.add_mutually_exclusive_group()
    add_option(how, "--trace", dest="use_trace", action="store_const", const=True, default=None,
               help="use torch.jit.trace on an input of the metadata's shape")
    add_option(how, "--script", dest="use_trace", action="store_const", const=False,
               help="use torch.jit.script only (no fallback to tracing)")
    add_option(p, "--no_check", dest="check", action="store_false",
               help="do not compare the exported module with model.pt")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.cli import CLIError
    from cxrkit.serve.export import ExportError, export_torchscript, monai_command
    from cxrkit.serve.model import ModelLoadError

    try:
        result = export_torchscript(args.run_dir, args.output_file, use_trace=args.use_trace, check=args.check)
    except (ModelLoadError, ExportError) as exc:
        raise CLIError(str(exc)) from None
    print(f"wrote {result.path} (torch.jit.{result.method})")
    if result.max_abs_diff is not None:
        print(f"checked: outputs match models/model.pt (largest difference {result.max_abs_diff:.2g})")
    cmd = monai_command(args.run_dir, result.path, use_trace=result.method == "trace")
    print("same as: " + shlex.join(cmd))
    return 0
