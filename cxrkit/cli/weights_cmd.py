"""``cxrkit weights list|info|check|import|fetch``: find, inspect, verify, install and fetch weight files."""

from __future__ import annotations

import argparse
import sys
import warnings
from contextlib import contextmanager
from typing import Iterator

from cxrkit.cli import CLIError


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cxrkit.options import CommandFormatter, add_common, add_option

    p = sub.add_parser("weights", help="list, fetch, check and import pretrained weight files",
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

    from cxrkit.options import arg_type, integer, number

    get = wsub.add_parser("fetch", help="download a plugin's file from where it is published, verify it, install "
                          "it (the only command that downloads)", formatter_class=CommandFormatter)
    get.add_argument("plugins", nargs="*", metavar="PLUGIN")
    add_option(get, "--all", action="store_true", help="every plugin with pretrained weights")
    add_option(get, "--accept_license", action="store_true",
               help="accept the licence of a restricted source (recorded once; `weights list` shows licences)")
    add_option(get, "--force", action="store_true", help="download again even when a file is installed")
    add_common(get, "trust_weights", "--trust")
    add_option(get, "--timeout", type=arg_type(number, minimum=0.01), default=30.0, metavar="S",
               help="seconds without a byte before a request is abandoned and retried")
    add_option(get, "--retries", type=arg_type(integer, minimum=0), default=4, metavar="N",
               help="retries after a cut connection, a timeout or a server error (backoff doubles)")
    add_option(get, "--workers", type=arg_type(integer, minimum=1), default=4, metavar="N",
               help="files downloaded at once")
    get.set_defaults(func=run_fetch)


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


def run_list(args: argparse.Namespace) -> int:
    from cxrkit.cli.table import format_table
    from cxrkit.registry import weights
    from cxrkit.weights import WeightError, find_weight_file, get_source, weights_dir
    from cxrkit.weights.fetching import fetch_state
    from cxrkit.weights.licenses import license_text

    rows = []
    for name in weights.names():
        try:
            source = get_source(name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is shown, not fatal
            rows.append((name, "?", "?", "BROKEN", "-", "-", f"{type(exc).__name__}: {exc}"))
            continue
        if not source.pretrained:
            rows.append((name, source.architecture, "-", "n/a", "-", "-", "no pretraining"))
            continue
        state = fetch_state(source)
        try:
            where = str(find_weight_file(source))
        except WeightError:
            where = source.fetch_command() if state.startswith("fetchable") else "-"
        rows.append((name, source.architecture, source.filenames[0], state, license_text(source),
                     source.fetch.kind if source.fetch is not None else "manual", where))
    print(format_table(["plugin", "architecture", "expected file", "state", "licence", "published", "where"],
                       rows, max_width=1000))
    print(f"\nweights folder: {weights_dir()} (set CXRKIT_WEIGHTS_DIR to change; get a file with "
          "`cxrkit weights fetch PLUGIN`, or install one you have with `cxrkit weights import PLUGIN FILE`)\n"
          "fetchable: `cxrkit weights fetch` downloads it ((licence): needs --accept_license once); manual: no "
          "direct link, `fetch` prints the steps\n"
          "verified: the file matches the hash its origin publishes; UNVERIFIED: it does not (accepted with "
          "--accept_sha256); unverifiable: the origin publishes no hash (docs/weights.md)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from cxrkit.weights import get_source

    with _weight_errors():
        source = get_source(args.plugin)
    from cxrkit.weights.licenses import license_text

    record = source.to_dict()
    record["license"] = license_text(source)
    record["published_hashes"] = source.published_hashes() or "none"
    record["fetch"] = source.fetch.location() if source.fetch is not None else "none (import the file by hand)"
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


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def run_fetch(args: argparse.Namespace) -> int:
    from cxrkit.cli.table import format_table
    from cxrkit.registry import RegistryError
    from cxrkit.weights import get_source
    from cxrkit.weights.fetching import (
        FetchResult,
        LicenseNotAcceptedError,
        ManualFetchError,
        fetch_all,
        fetchable_sources,
    )

    if args.all == bool(args.plugins):
        raise CLIError("name the plugins to fetch, or pass --all (not both)", code=2)
    names = fetchable_sources() if args.all else list(args.plugins)
    for name in names:
        try:
            get_source(name)
        except RegistryError as exc:
            raise CLIError(str(exc), code=2) from exc
    with _weight_errors():
        results = fetch_all(names, workers=args.workers, accept_license=args.accept_license, force=args.force,
                            trust=args.trust_weights, timeout=args.timeout, retries=args.retries)
    rows, failed = [], 0
    for name, result in results.items():
        if isinstance(result, FetchResult):
            rows.append((name, result.action, _size(result.size), result.verification, f"{result.seconds:.1f}",
                         str(result.path)))
            continue
        failed += 1
        label = ("manual" if isinstance(result, ManualFetchError) else
                 "licence" if isinstance(result, LicenseNotAcceptedError) else "FAILED")
        print(f"{name}: {result}" if label == "manual" else f"error: {str(result).splitlines()[0]}",
              file=sys.stderr)
        rows.append((name, label, "-", "-", "-", str(result).splitlines()[0] if label != "manual" else
                     f"see the steps above, then `{get_source(name).import_command()}`"))
    print(format_table(["plugin", "result", "size", "digest", "seconds", "file"], rows, max_width=1000))
    if failed:
        print(f"\n{failed} of {len(rows)} not fetched (see above); nothing partial was installed", file=sys.stderr)
    return 1 if failed else 0
