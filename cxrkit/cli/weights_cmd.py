"""``cxrkit weights list|info|check|import``: find, inspect, verify and install weight files."""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from cxrkit.cli import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser("weights", help="list, check and import pretrained weight files (never downloads)",
                       formatter_class=CommandFormatter)
    wsub = p.add_subparsers(dest="weights_command", metavar="ACTION")
    p.set_defaults(func=lambda args: _usage(p))

    ls = wsub.add_parser("list", help="every weight plugin, its expected file, and whether it is found here")
    ls.set_defaults(func=run_list)

    info = wsub.add_parser("info", help="everything cxrkit knows about one plugin (file, origin, preprocessing)")
    info.add_argument("plugin")
    info.set_defaults(func=run_info)

    check = wsub.add_parser("check", help="load a file for a plugin, verify every tensor, report its hash",
                            formatter_class=CommandFormatter)
    check.add_argument("plugin")
    check.add_argument("file", nargs="?", help="the weight file (default: the installed one)")
    add_common(check, "trust_weights", "--trust")
    add_option(check, "--strict_hash", action="store_true", help="exit 1 when the published hash does not match")
    check.set_defaults(func=run_check)

    imp = wsub.add_parser("import", help="verify a downloaded file, then copy it into the weights folder",
                          formatter_class=CommandFormatter)
    imp.add_argument("plugin")
    imp.add_argument("file")
    add_common(imp, "trust_weights", "--trust")
    add_option(imp, "--force", action="store_true", help="replace an installed file with different content")
    add_option(imp, "--accept_sha256", metavar="SHA256",
               help="install a file that does not match the origin's published hash, as UNVERIFIED weights: "
               "give the file's full sha256 (the refusal prints it)")
    imp.set_defaults(func=run_import)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


@contextmanager
def _weight_errors() -> Iterator[None]:
    """Show warnings on stderr and turn weight/registry errors into clean CLI errors."""
    from cxrkit.registry import PluginLoadWarning, RegistryError
    from cxrkit.weights import TrustedLoadWarning, WeightError, WeightHashWarning

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            try:
                yield
            except RegistryError as exc:
                raise CLIError(str(exc), code=2) from exc
            except WeightError as exc:
                raise CLIError(str(exc)) from exc
            finally:
                caught = list(recorded)
    finally:  # shown after recording stopped: showwarning while recording appends to the list it walks
        for w in caught:
            if issubclass(w.category, (TrustedLoadWarning, WeightHashWarning, PluginLoadWarning)):
                print(f"warning: {w.message}", file=sys.stderr)
            else:
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def _verification_cell(source, path) -> str:
    """``verified`` / ``UNVERIFIED`` / ``unverifiable`` for a found file (hashes only when a hash is published)."""
    from cxrkit.weights.checkpoint import file_digests
    from cxrkit.weights.provenance import UNVERIFIED, check_hash, verification

    published = source.published_hashes()
    if not published:
        return "unverifiable (no published hash)"
    status = verification(check_hash(source, file_digests(path, published), path, warn=False))
    return "UNVERIFIED (hash mismatch)" if status == UNVERIFIED else status


def run_list(args: argparse.Namespace) -> int:
    from cxrkit.cli.table import format_table
    from cxrkit.registry import weights
    from cxrkit.weights import WeightError, find_weight_file, get_source, weights_dir

    rows = []
    for name in weights.names():
        try:
            source = get_source(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is shown, not fatal
            rows.append((name, "?", "?", "BROKEN", "-", f"{type(exc).__name__}: {exc}"))
            continue
        if not source.pretrained:
            rows.append((name, source.architecture, "-", "n/a", "-", "no pretraining"))
            continue
        try:
            found = find_weight_file(source)
            rows.append((name, source.architecture, source.filenames[0], "yes", _verification_cell(source, found),
                         str(found)))
        except WeightError:
            rows.append((name, source.architecture, source.filenames[0], "no", "-", "-"))
    print(format_table(["plugin", "architecture", "expected file", "found", "verified", "where"], rows,
                       max_width=1000))
    print(f"\nweights folder: {weights_dir()} (set CXRKIT_WEIGHTS_DIR to change; "
          "install a file with `cxrkit weights import PLUGIN FILE`)\n"
          "verified: the file matches the hash its origin publishes; UNVERIFIED: it does not (accepted with "
          "--accept_sha256); unverifiable: the origin publishes no hash (docs/weights.md)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from cxrkit.weights import get_source

    with _weight_errors():
        source = get_source(args.plugin)
    record = source.to_dict()
    record["published_hashes"] = source.published_hashes() or "none"
    width = max(map(len, record))
    for key, value in record.items():
        print(f"{key.ljust(width)}  {value}")
    return 0


def _hash_status(loaded_hash_ok: bool | None, source) -> str:
    published = source.published_hashes()
    listed = "; ".join(f"{alg} {' or '.join(p)}" for alg, p in published.items())
    if loaded_hash_ok is None:
        return "none published by the origin (sha256 recorded above)"
    if loaded_hash_ok:
        return f"OK (matches published {listed}): verified"
    return f"MISMATCH (published: {listed}): UNVERIFIED weights"


def run_check(args: argparse.Namespace) -> int:
    from cxrkit.networks.backbones import build_backbone
    from cxrkit.weights import get_source, load_pretrained

    with _weight_errors():
        source = get_source(args.plugin)
        if not source.pretrained:
            raise CLIError(f"plugin '{source.name}' has no pretrained weights; there is nothing to check", code=2)
        backbone = build_backbone(source.architecture, source.in_channels)
        report = load_pretrained(backbone, source, args.file, trust=args.trust_weights)
    total = len(backbone.state_dict())
    detail = []
    if report.dropped:
        shown = ", ".join(report.dropped[:4]) + (", ..." if len(report.dropped) > 4 else "")
        detail.append(f"{len(report.dropped)} head/extra tensors dropped: {shown}")
    if report.missing_optional:
        detail.append(f"{len(report.missing_optional)} num_batches_tracked buffers absent (allowed)")
    lines = [
        ("plugin", f"{source.name} ({source.architecture}, {source.in_channels} input channel(s))"),
        ("file", str(report.path)),
        ("tensors", f"{report.matched} of {total} backbone tensors matched" + (f" ({'; '.join(detail)})" if detail else "")),
        ("channels", report.channels_adapted or "as published"),
        ("sha256", report.sha256),
        *[(alg, digest) for alg, digest in report.digests.items() if alg != "sha256"],
        ("hash", _hash_status(report.hash_ok, source)),
    ]
    failed = args.strict_hash and report.hash_ok is False
    lines.append(("result", "FAILED (hash mismatch, --strict_hash)" if failed else "OK"))
    for key, value in lines:
        print(f"{key:<9} {value}")
    return 1 if failed else 0


def run_import(args: argparse.Namespace) -> int:
    from cxrkit.weights import import_weight_file

    with _weight_errors():
        result = import_weight_file(args.plugin, args.file, trust=args.trust_weights, force=args.force,
                                    accept_sha256=args.accept_sha256)
    loaded = result.loaded
    verb = "installed" if result.copied else "already installed"
    print(f"{verb}: {args.file} -> {result.destination}")
    print(f"verified {loaded.matched} backbone tensors for plugin '{loaded.plugin}'; sha256 {loaded.sha256}")
    status = {
        "verified": "verified (the file matches the hash its origin publishes)",
        "unverifiable": "unverifiable (the origin publishes no hash; the sha256 above is recorded with every run)",
        "unverified": "UNVERIFIED (accepted with --accept_sha256; runs and reports using it say so)",
    }[result.verification]
    print(f"published hash: {status}")
    if result.shadowed_by is not None:
        print(f"note: {result.shadowed_by} has an official name and is found first; runs use it, not this "
              "unverified file, until it is removed")
    return 0
