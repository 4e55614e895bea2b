"""Whether a weight file is the one its origin published: verified, unverified or unverifiable.

Every file cxrkit loads gets one of three marks, computed from its digests each
time it is loaded (so a file copied by hand is marked as truly as an imported one):

* ``verified``: the file's digest matches a hash the origin publishes: a full
  hash, or the leading hex digits the origin publishes (torchvision's 8-hex
  sha256 suffix in the file name, MoCo's md5 prefix).
* ``unverified``: the origin publishes a hash and the file does not match it
  (damaged, re-saved, another release, or not these weights at all).
  ``cxrkit weights import`` refuses such a file unless the user accepts its
  exact sha256 (``--accept_sha256 SHA256``); it is then installed as
  ``unverified-<name>``, never under the official name, and ``cxrkit weights
  list``, the run's ``weights.json`` and the reports say "unverified".
* ``unverifiable``: the origin publishes no hash (the Zenodo chest X-ray models,
  iNat2021, SwAV, CheXNet): there is nothing to compare with, so the file is
  accepted and marked as such; its sha256 is recorded so a result can be traced
  to the exact file.

Torch-free: ``cxrkit weights list`` and the reports use it without importing torch.
"""

from __future__ import annotations

import os
import re
import warnings

from cxrkit.weights.errors import WeightHashWarning
from cxrkit.weights.source import WeightSource

__all__ = [
    "VERIFIED",
    "UNVERIFIED",
    "UNVERIFIABLE",
    "UNVERIFIED_PREFIX",
    "verification",
    "check_hash",
    "published_text",
    "normalise_sha256",
]

VERIFIED = "verified"
UNVERIFIED = "unverified"
UNVERIFIABLE = "unverifiable"
#: file-name prefix of an accepted unverified file in the weight store.
UNVERIFIED_PREFIX = "unverified-"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def verification(hash_ok: bool | None) -> str:
    """The mark of a file from its hash comparison (``True``, ``False``, ``None`` = nothing published)."""
    return UNVERIFIABLE if hash_ok is None else VERIFIED if hash_ok else UNVERIFIED


def published_text(source: WeightSource, filename: str | None = None) -> str:
    """The published digests in words, e.g. ``sha256 starting 0676ba61 or 11ad3fa6``; ``""`` when none."""
    return "; ".join(f"{alg} starting {' or '.join(p)}" for alg, p in source.published_hashes(filename).items())


def check_hash(source: WeightSource, digests: dict[str, str], path: str | os.PathLike[str],
               warn: bool = True) -> bool | None:
    """Compare a file's digests with the origin's published ones.

    Args:
        source: the weight source.
        digests: ``{algorithm: hexdigest}`` of the file (see :func:`~cxrkit.weights.checkpoint.file_digests`).
        path: the file (for the warning).
        warn: issue a :class:`WeightHashWarning` on a mismatch.

    Returns:
        ``None`` when the origin publishes no hash, else whether a published digest matches.
    """
    published = source.published_hashes(os.path.basename(os.fspath(path)))
    if not published:
        return None
    if any(digests.get(alg, "").startswith(p) for alg, prefixes in published.items() for p in prefixes):
        return True
    if warn:
        got = "; ".join(f"{alg} {digests[alg]}" for alg in published if alg in digests)
        warnings.warn(
            f"{path}: hash mismatch for plugin '{source.name}': {source.origin} publishes "
            f"{published_text(source, os.path.basename(os.fspath(path)))}, "
            f"the file has {got}. These are UNVERIFIED weights: the file may be damaged, re-saved or a different "
            "release; check where it came from.",
            WeightHashWarning,
            stacklevel=3,
        )
    return False


def normalise_sha256(value: str, option: str = "accept_sha256") -> str:
    """``value`` as a lowercase 64-hex sha256.

    Raises:
        ValueError: not a full sha256 (the message names ``option``).
    """
    text = str(value).strip().lower()
    if not _SHA256.fullmatch(text):
        raise ValueError(f"{option} needs the file's full sha256 (64 hex digits), got {value!r}")
    return text
