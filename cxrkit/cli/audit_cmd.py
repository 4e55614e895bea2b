"""``cxrkit audit RUN_DIR``: is the model looking at the lungs? Occlusion and Grad-CAM shortcut probes."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option, arg_type, integer

    p = sub.add_parser(
        "audit",
        help="shortcut probes of a trained run: occlusion and Grad-CAM energy inside the lungs",
        description=(
            "Test whether a trained run's model needs what lies outside the lungs to be right (DeGrave, Janizek "
            "and Lee, Nature Machine Intelligence 2021). On the run's held-out test images: the metrics again "
            "with only the lungs kept and with the lungs removed (the removed region filled from an image of "
            "another class, and blurred), and the share of Grad-CAM energy inside the lungs. The lung region "
            "comes from the collection's own masks (images/ + masks/) or a documented anatomical prior. Writes "
            "RUN_DIR/audit/audit.json and figures; exit code 3 when a shortcut is suspected."
        ),
        epilog=("examples:\n  cxrkit audit runs/inat_swav-20240101-120000\n"
                "  cxrkit audit runs/inat_swav-20240101-120000 --json --max_images 100 --device cuda"),
        formatter_class=CommandFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder")
    add_common(p, "dataset_dir", default=None, help="where the dataset is now (default: the root in split.json)")
    add_option(p, "--max_images", type=arg_type(integer, minimum=0), default=200, metavar="N",
               help="audit at most N test images, class-stratified (default 200; 0: all)")
    add_option(p, "--no_masks", dest="use_masks", action="store_false",
               help="ignore the collection's lung masks; always use the anatomical prior")
    add_common(p, "seed", help="image subset and donor shuffle seed (default: 0)")
    add_common(p, "batch_size", default=16, help="images per forward pass (default: 16)")
    add_common(p, "device")
    add_option(p, "--json", action="store_true", help="print every figure as JSON (with shortcut_suspected)")
    add_common(p, "no_progress")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.audit.shortcuts import AuditError, audit_run
    from cxrkit.cli import CLIError
    from cxrkit.runfolder import RunFolderError
    from cxrkit.serve.model import ModelLoadError

    try:
        result = audit_run(args.run_dir, dataset_dir=args.dataset_dir, max_images=args.max_images or None,
                           use_masks=args.use_masks, seed=args.seed, device=args.device, batch_size=args.batch_size,
                           progress=args.progress and not args.json)
    except (AuditError, ModelLoadError, RunFolderError) as exc:
        raise CLIError(str(exc)) from None
    if args.json:
        print(json.dumps(result.data, indent=2))
    else:
        data = result.data
        print(f"audited {data['n_images']} {data['part']} images in {data['seconds']:.0f}s; lung region: "
              f"{data['lung_region']['text']}")
        print(f"occlusion: {data['occlusion']['verdict']['text']}")
        print(f"Grad-CAM:  {data['evidence']['verdict']['text']}")
        print(f"shortcut suspected: {'YES' if result.shortcut_suspected else 'no'}")
        print(f"wrote {result.path} and its figures")
    return 3 if result.shortcut_suspected else 0
