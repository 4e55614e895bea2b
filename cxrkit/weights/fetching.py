"""``cxrkit weights fetch``: get a source's file from where its record says it is published, verified.

The one place in cxrkit that downloads. For each source, from its
:class:`~cxrkit.weights.fetchspec.FetchSpec`:

1. a file already found (the weights folder, torch hub's cache for torchvision files) is verified
   and used as it is: nothing is downloaded;
2. a restricted licence needs ``accept_license=True`` (recorded once, :mod:`cxrkit.weights.licenses`);
3. a direct URL is streamed into ``<store>/<plugin>/.<name>.partial`` (:mod:`cxrkit.weights.download`);
   a hub file comes through ``huggingface_hub``'s cache (:mod:`cxrkit.weights.hub`); a manual source
   raises :class:`ManualFetchError` with the steps and the ``cxrkit weights import`` command;
4. the file must match every digest its origin publishes (the fetch spec's md5/sha256, the hub's
   sha256, a hash in the name), then passes the same verification as ``cxrkit weights import``
   (static pickle scan, every backbone tensor matched);
5. only then is it moved (or, from the hub cache, linked or copied) into place, atomically.

A lock file (``<store>/<plugin>/.<name>.lock``) serialises processes fetching the same file:
the second waits, then finds the first one's file installed and reuses it.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from filelock import FileLock

from cxrkit.weights.download import FetchError, download, file_hashes
from cxrkit.weights.errors import WeightError, WeightHashWarning
from cxrkit.weights.fetchspec import HUB, MANUAL, mirrored
from cxrkit.weights.licenses import is_accepted, record_acceptance
from cxrkit.weights.provenance import UNVERIFIED, UNVERIFIED_PREFIX, check_hash, verification
from cxrkit.weights.source import WeightSource, get_source
from cxrkit.weights.store import find_weight_file, installed_path, weights_dir

__all__ = ["FetchResult", "FetchError", "ManualFetchError", "LicenseNotAcceptedError", "fetch", "fetch_all",
           "fetch_state", "fetchable_sources", "manual_steps"]

logger = logging.getLogger(__name__)


class ManualFetchError(FetchError):
    """The source has no direct link: the message holds the steps and the import command."""


class LicenseNotAcceptedError(FetchError):
    """The source's licence restricts use and the user has not accepted it."""


@dataclass
class FetchResult:
    """What :func:`fetch` did for one source.

    Attributes:
        source: the plugin name.
        path: the installed file (or torch hub's cached one).
        action: ``"downloaded"``, ``"from hub cache"`` (a hub file already cached, no download) or
            ``"already installed"``.
        verification: ``"verified"`` (matches a published digest) or ``"unverifiable"`` (none published).
        sha256: the file's sha256.
        size: bytes.
        seconds: wall time of this fetch.
        location: where it came from (URL or hub repo and revision).
    """

    source: str
    path: Path
    action: str
    verification: str
    sha256: str
    size: int
    seconds: float
    location: str


def _what(source: WeightSource) -> str:
    return f"weight source '{source.name}'"


def manual_steps(source: WeightSource) -> str:
    """The message for a source without a direct link: the steps, then the import command."""
    steps = source.fetch.manual if source.fetch is not None else f"get the file from {source.origin}"
    return (f"{_what(source)} has no direct download link: {steps}\nThen verify and install it with:\n"
            f"  {source.import_command()}")


def _check_license(source: WeightSource, accept_license: bool) -> None:
    if not source.license_restricted or is_accepted(source):
        return
    if not accept_license:
        raise LicenseNotAcceptedError(
            f"{_what(source)} is published under {source.license or 'a restrictive licence'}, which restricts "
            f"its use; read the terms at {source.origin}, then run `cxrkit weights fetch {source.name} "
            "--accept_license` (accept_license=True in Python; recorded once)")
    path = record_acceptance(source)
    logger.info("recorded acceptance of %s for %s in %s", source.license, source.name, path)


def _installed(source: WeightSource, root: Path | None) -> Path | None:
    """The file runs would use now, if it has an official name (an accepted unverified file does not count)."""
    for where in ([root] if root is not None else []) + [None]:
        try:
            found = find_weight_file(source, where)
        except WeightError:
            continue
        return None if found.name.startswith(UNVERIFIED_PREFIX) else found
    return None


def _check_digests(source: WeightSource, digests: dict[str, str], published: dict[str, str], partial: Path,
                   url: str) -> None:
    """The fetch spec's / hub's digests must match; the temporary file is removed when they do not."""
    for alg, want in published.items():
        if not digests.get(alg, "").startswith(want):
            partial.unlink(missing_ok=True)
            raise FetchError(f"{_what(source)}: the file from {url} has {alg} {digests.get(alg)}, but its origin "
                             f"publishes {want}; it was deleted and nothing was installed (a damaged download or a "
                             "changed file: fetch again, and report it if it persists)")


def _verify(source: WeightSource, file: Path, url: str, trust: bool):
    """The verification of ``cxrkit weights import``; a file that fails it is deleted if it is a download."""
    from cxrkit.weights.load import load_state_dict  # imports torch: only when a file is verified

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", WeightHashWarning)  # a mismatch is refused below
            loaded = load_state_dict(source, file, trust=trust)
    except WeightError as exc:
        raise FetchError(f"{_what(source)}: the file from {url} does not verify; nothing was installed: "
                         f"{str(exc).splitlines()[0]}") from exc
    if loaded.verification == UNVERIFIED:
        raise FetchError(f"{_what(source)}: the file from {url} has sha256 {loaded.sha256}, which does not match "
                         f"the hash its origin publishes; nothing was installed")
    return loaded


def _link_or_copy(src: Path, dest: Path, sha256: str) -> None:
    """Install a verified cached file: a hard link (no extra disk) when possible, else an atomic copy."""
    from cxrkit.weights.install import _atomic_copy

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)
        os.replace(tmp, dest)
    except OSError:
        tmp.unlink(missing_ok=True)
        _atomic_copy(src, dest, sha256)


def _fetch_url(source: WeightSource, dest: Path, partial: Path, *, timeout: float, retries: int, backoff: float,
               trust: bool, position: int | None, progress: bool | None) -> tuple[Path, str, str, dict]:
    url = mirrored(source.fetch.url)
    digests = download(url, partial, what=_what(source), timeout=timeout, retries=retries, backoff=backoff,
                       progress=progress, position=position)
    _check_digests(source, digests, source.fetch.published_digests(), partial, url)
    try:
        loaded = _verify(source, partial, url, trust)
    except FetchError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, dest)
    return dest, "downloaded", loaded.verification, digests


def _fetch_hub(source: WeightSource, dest: Path, *, timeout: float, trust: bool) -> tuple[Path, str, str, dict]:
    from cxrkit.weights.hub import hub_file

    spec = source.fetch
    filename = spec.hf_filename or source.fetch_filename
    where = f"{spec.hf_hub_id}@{spec.hf_revision}:{filename}"
    cached, hub_sha256 = hub_file(spec, filename, _what(source), timeout)
    digests = file_hashes(cached)
    published = dict(spec.published_digests())
    if hub_sha256:
        published.setdefault("sha256", hub_sha256)
    for alg, want in published.items():
        if not digests[alg].startswith(want):
            raise FetchError(f"{_what(source)}: {cached} (from {where}) has {alg} {digests[alg]}, but the hub "
                             f"publishes {want}; delete it from the hub cache and fetch again; nothing was installed")
    loaded = _verify(source, cached, where, trust)
    _link_or_copy(cached, dest, loaded.sha256)
    status = "verified" if published else loaded.verification
    return dest, "from hub cache", status, digests


def fetch(source: WeightSource | str, *, accept_license: bool = False, force: bool = False, trust: bool = False,
          timeout: float = 30.0, retries: int = 4, backoff: float = 1.0, root: str | os.PathLike[str] | None = None,
          position: int | None = None, progress: bool | None = None) -> FetchResult:
    """Get ``source``'s file from where it is published, verify it and install it where ``import`` puts files.

    Args:
        source: a :class:`WeightSource` or a registered plugin name.
        accept_license: accept a restricted licence (recorded, so it is asked once).
        force: download again even when a file is installed.
        trust: allow full unpickling of a file the safe loader refuses (as ``import --trust``).
        timeout: seconds without a byte before a request is abandoned (and retried).
        retries: retries of a transient failure (cut connection, timeout, 5xx).
        backoff: first wait between retries, in seconds (doubled each time).
        root: weights folder (default ``$CXRKIT_WEIGHTS_DIR`` or ``~/.cache/cxrkit/weights``).
        position: progress-bar line (several fetches at once).
        progress: show progress bars (``None``: on a terminal).

    Returns:
        A :class:`FetchResult`.

    Raises:
        LicenseNotAcceptedError: restricted licence, not accepted.
        ManualFetchError: no direct link (the message holds the steps and the import command).
        FetchError: download or verification failed; nothing was installed.
        DiskFullError: no space left while downloading (the partial file is removed).
    """
    source = get_source(source)
    start = time.perf_counter()
    if not source.pretrained:
        raise WeightError(f"{_what(source)} has no pretrained weights; there is nothing to fetch")
    store = Path(root).expanduser() if root is not None else weights_dir()
    dest = installed_path(source, source.fetch_filename, store)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest.with_name(f".{dest.name}.lock"))):
        found = None if force else _installed(source, Path(root).expanduser() if root is not None else None)
        if found is not None:  # includes torchvision files in torch hub's cache, used as they are
            try:
                loaded = _verify(source, found, str(found), trust)
            except FetchError as exc:
                raise FetchError(f"{exc}; the installed file {found} is the problem: fetch again with --force "
                                 "(force=True) to replace it") from exc
            return FetchResult(source.name, found, "already installed", loaded.verification, loaded.sha256,
                               found.stat().st_size, time.perf_counter() - start, str(found))
        if source.fetch is None or source.fetch.kind == MANUAL:
            raise ManualFetchError(manual_steps(source))
        _check_license(source, accept_license)  # gates downloading only: an installed file is the user's
        if source.fetch.kind == HUB:
            path, action, status, digests = _fetch_hub(source, dest, timeout=timeout, trust=trust)
        else:
            partial = dest.with_name(f".{dest.name}.partial")
            path, action, status, digests = _fetch_url(source, dest, partial, timeout=timeout, retries=retries,
                                                       backoff=backoff, trust=trust, position=position,
                                                       progress=progress)
    logger.info("fetched %s into %s (%s, sha256 %s)", source.name, path, status, digests["sha256"])
    return FetchResult(source.name, path, action, status, digests["sha256"], path.stat().st_size,
                       time.perf_counter() - start, source.fetch.location())


def fetchable_sources() -> list[str]:
    """Registered sources with pretrained weights (what ``fetch --all`` tries), sorted."""
    from cxrkit.registry import weights

    names = []
    for name in weights.names():
        try:
            if get_source(name).pretrained:
                names.append(name)
        except Exception:  # noqa: BLE001 - a broken plugin is reported by `weights list`, not here
            continue
    return names


def fetch_all(names: Iterable[str], *, workers: int = 4, **kwargs) -> dict[str, FetchResult | Exception]:
    """:func:`fetch` each source in a bounded thread pool; ``{name: result or the error}`` in input order.

    Args:
        names: plugin names.
        workers: files downloaded at once.
        **kwargs: passed to :func:`fetch`.
    """
    names = list(dict.fromkeys(names))

    def one(item: tuple[int, str]) -> FetchResult | Exception:
        index, name = item
        try:
            return fetch(name, position=index, **kwargs)
        except (WeightError, OSError) as exc:  # reported in the summary; the other files go on
            return exc

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names) or 1))) as pool:
        return dict(zip(names, pool.map(one, enumerate(names))))


def fetch_state(source: WeightSource) -> str:
    """For ``weights list``: ``installed (verified|UNVERIFIED|unverifiable)``, ``fetchable``, ``manual`` or ``n/a``."""
    if not source.pretrained:
        return "n/a"
    try:
        found = find_weight_file(source)
    except WeightError:
        found = None
    if found is not None:
        published = source.published_hashes(found.name)
        if not published:
            return "installed (unverifiable)"
        from cxrkit.weights.checkpoint import file_digests

        mark = verification(check_hash(source, file_digests(found, published), found, warn=False))
        return f"installed ({'UNVERIFIED' if mark == UNVERIFIED else mark})"
    if source.fetch is None or source.fetch.kind == MANUAL:
        return "manual"
    return "fetchable" + (" (licence)" if source.license_restricted and not is_accepted(source) else "")

