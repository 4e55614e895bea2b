"""Streaming one file over HTTP(S): resume with ``Range``, retry with backoff, time out, never install half.

:func:`download` writes into a *partial* file the caller names (next to where the
file will be installed, so the final move is an atomic rename) and returns its
digests; installing it is the caller's job, after verification. What it does:

* streams in 1 MiB chunks with a progress bar (one per file, tqdm);
* follows redirects (``urllib``'s handler, which keeps the ``Range`` header);
* a read timeout (``timeout`` seconds without a byte) so a stalled server cannot hang it;
* on a cut connection, a timeout, a 5xx or a 429 it waits ``backoff * 2**attempt`` seconds and
  asks again, for the missing bytes only (``Range: bytes=N-``; a server answering 200 instead of
  206 is read from the start); a partial file left by an earlier interrupted run is resumed too;
* a 4xx other than 429 fails at once (no retry can help), as does a 200 that is an HTML page
  (a login, error or "virus scan" page served instead of the file);
* a full disk is a :class:`~cxrkit.engine.background.DiskFullError`; the partial file is removed
  to give the space back.

Torch-free (``urllib`` from the standard library); hashing is done while reading.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from cxrkit.weights.errors import WeightError

__all__ = ["FetchError", "download", "file_hashes", "USER_AGENT"]

logger = logging.getLogger(__name__)

USER_AGENT = "cxrkit-weights-fetch"
_CHUNK = 1 << 20
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
_HTML_START = (b"<!doctype html", b"<html", b"<?xml", b"<head")


class FetchError(WeightError):
    """A file could not be fetched; the message names the source, the URL and what to do."""


class _Retry(Exception):
    """A transient failure: the request is repeated (resuming) after a backoff."""


def file_hashes(path: Path, algorithms: tuple[str, ...] = ("sha256", "md5")) -> dict[str, str]:
    """Hex digests of a whole file (read once)."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            for h in hashers.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashers.items()}


def _disk_full(exc: OSError, partial: Path, what: str) -> Exception:
    from cxrkit.engine.background import DiskFullError  # imports torch: only on this rare path

    partial.unlink(missing_ok=True)
    full = DiskFullError(f"{what}: no space left on the disk while writing {partial}; the partial download was "
                         "removed. Free some space (or set CXRKIT_WEIGHTS_DIR to another disk) and fetch again")
    full.errno = exc.errno
    return full


def _open(url: str, start: int, timeout: float, headers: dict[str, str]) -> http.client.HTTPResponse:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity",
                                                   **headers})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only (FetchSpec checks)


def _looks_like_html(response: http.client.HTTPResponse, first: bytes) -> bool:
    ctype = (response.headers.get("Content-Type") or "").lower()
    return "text/html" in ctype or first.lstrip()[:16].lower().startswith(_HTML_START)


def _attempt(url: str, partial: Path, what: str, timeout: float, headers: dict[str, str], bar) -> None:
    """One request: append the missing bytes to ``partial``. Raises :class:`_Retry` on transient failures."""
    start = partial.stat().st_size if partial.exists() else 0
    try:
        response = _open(url, start, timeout, headers)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # asked past the end: the partial file is stale, start again
            partial.unlink()
            raise _Retry(f"HTTP 416 for a resume at byte {start}") from None
        if exc.code in _RETRY_STATUS:
            raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
        hint = {401: "the file needs a login", 403: "access is refused (a login or licence page?)",
                404: "the file is not (or no longer) there"}.get(exc.code, "the server refused the request")
        raise FetchError(f"{what}: {url} answered HTTP {exc.code} {exc.reason} ({hint}); check the URL, "
                         "or get the file by hand and use `cxrkit weights import`") from None
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
        raise _Retry(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
    with response:
        append = start > 0 and response.status == 206
        if start and not append:
            logger.info("%s: the server ignored the Range request; reading from the start", url)
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        first = response.read(min(_CHUNK, 512))
        if not append and _looks_like_html(response, first):
            partial.unlink(missing_ok=True)
            raise FetchError(f"{what}: {url} returned an HTML page instead of the weight file (an error, login or "
                             "download-confirmation page); open the URL in a browser, or get the file by hand and "
                             "use `cxrkit weights import`")
        bar.reset(total=total)
        bar.update(start)
        try:
            with open(partial, "ab" if append else "wb") as out:
                chunk = first
                while chunk:
                    out.write(chunk)
                    bar.update(len(chunk))
                    chunk = response.read(_CHUNK)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise _disk_full(exc, partial, what) from exc
            if isinstance(exc, (TimeoutError, socket.timeout, ConnectionError)):
                raise _Retry(f"{type(exc).__name__} after {partial.stat().st_size} bytes") from None
            raise
        except http.client.IncompleteRead as exc:
            raise _Retry(f"connection cut after {partial.stat().st_size} bytes ({exc})") from None
        got = partial.stat().st_size
        if total is not None and got < total:
            raise _Retry(f"connection cut after {got} of {total} bytes")


def download(url: str, partial: Path, *, what: str, timeout: float = 30.0, retries: int = 4,
             backoff: float = 1.0, headers: dict[str, str] | None = None, progress: bool | None = None,
             position: int | None = None) -> dict[str, str]:
    """Download ``url`` into ``partial`` (resuming what it already holds) and return its digests.

    Args:
        url: the file's URL.
        partial: the file to write; kept after a network failure so a later call resumes it.
        what: who is fetching, for messages (``"weight source 'moco_v1'"``).
        timeout: seconds to wait for a connection or for the next bytes.
        retries: how many times a transient failure is retried.
        backoff: first wait between tries, in seconds (doubled each time, at most 60 s).
        headers: extra request headers.
        progress: show a progress bar (``None``: only on a terminal).
        position: the bar's line when several files download at once.

    Returns:
        ``{"sha256": ..., "md5": ...}`` of the complete file.

    Raises:
        FetchError: a 4xx, an HTML page, or still failing after ``retries`` retries (the partial file
            is kept for a resume).
        DiskFullError: no space left (the partial file is removed).
    """
    from tqdm.auto import tqdm

    partial.parent.mkdir(parents=True, exist_ok=True)
    last = ""
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=partial.name.lstrip(".").removesuffix(".partial"),
              disable=None if progress is None else not progress, position=position, leave=True) as bar:
        for attempt in range(retries + 1):
            try:
                _attempt(url, partial, what, timeout, dict(headers or {}), bar)
                return file_hashes(partial)
            except _Retry as exc:
                last = str(exc)
                if attempt == retries:
                    break
                wait = min(60.0, backoff * 2 ** attempt)
                logger.warning("%s: %s: %s; retrying in %.1f s (%d/%d)", what, url, last, wait, attempt + 1, retries)
                time.sleep(wait)
    kept = partial.stat().st_size if partial.exists() else 0
    raise FetchError(f"{what}: {url} failed after {retries + 1} tries ({last}); {kept} bytes are kept in {partial} "
                     "and the next fetch resumes from there (a timeout: --timeout)")
