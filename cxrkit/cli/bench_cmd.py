"""``cxrkit bench``: training, data-loading and inference speed, and the targets (also ``python -m cxrkit.bench``)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.bench.suite import add_arguments
    from cxrkit.options import CommandFormatter

    p = sub.add_parser(
        "bench",
        help="measure training, data loading, linear probe and inference speed; check the speed targets",
        description=(
            "The bundle trainer against a plain PyTorch loop on the same network and data, the share of time "
            "spent waiting for data (uncached / cached), a linear probe epoch against a fine-tuning epoch, and "
            "inference images/s (plain / batch norms folded). Writes benchmark.json and benchmark.md into "
            "--output_dir; targets are checked here, never by tests."
        ),
        epilog="example:\n  cxrkit bench --output_dir bench-out --image_size 128 --batch_size 16 --steps 10",
        formatter_class=CommandFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.bench.suite import benchmark
    from cxrkit.cli import CLIError

    try:
        return benchmark(args)
    except ValueError as exc:
        raise CLIError(str(exc), code=2) from None
