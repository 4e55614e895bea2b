"""``python -m cxrkit.bench``: the same benchmark as ``cxrkit bench`` (see :mod:`cxrkit.bench.suite`)."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from cxrkit.bench.suite import add_arguments, benchmark

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The options of ``cxrkit bench``, as a stand-alone parser."""
    from cxrkit.options import CommandFormatter

    parser = argparse.ArgumentParser(prog="python -m cxrkit.bench", formatter_class=CommandFormatter,
                                     description="Measure training, data loading and inference speed; check the "
                                                 "targets (same as `cxrkit bench`).")
    return add_arguments(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; a bad option is a usage message and exit code 2."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad option (2)
        return int(exc.code or 0)
    try:
        return benchmark(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
