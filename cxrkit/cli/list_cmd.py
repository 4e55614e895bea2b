"""``cxrkit list [weights|backbones|datasets]``: what is registered, and who provides it."""

from __future__ import annotations

import argparse
import warnings


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list registered weight sources, backbones and datasets")
    p.add_argument("kind", nargs="?", choices=["weights", "backbones", "datasets"], help="one registry only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrkit.cli.table import format_table
    from cxrkit.registry import REGISTRIES, PluginLoadWarning

    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for i, kind in enumerate(kinds):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PluginLoadWarning)
            rows = REGISTRIES[kind].rows()
        for w in caught:
            print(f"warning: {w.message}", file=__import__("sys").stderr)
        if len(kinds) > 1:
            print(("\n" if i else "") + f"{kind}:")
        print(format_table(["name", "description", "provided by"], rows))
    return 0
