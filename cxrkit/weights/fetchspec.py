"""Where a weight source's file is published: the ``fetch`` field of a :class:`~cxrkit.weights.WeightSource`.

A :class:`FetchSpec` is declarative, like the ``url`` / ``hf_hub_id`` / ``file``
fields of timm's ``PretrainedCfg``. It says how ``cxrkit weights fetch`` gets
the file, and nothing else in cxrkit reads it (training, predict and the servers
never download). Exactly one of three kinds:

* ``url``: a direct link, streamed over HTTP(S) with resume and retries
  (:mod:`cxrkit.weights.download`);
* ``hf_hub_id`` + ``hf_revision`` (+ ``hf_filename``): a file in a Hugging Face
  hub repository, pinned to a commit, through ``huggingface_hub`` and its cache
  (:mod:`cxrkit.weights.hub`);
* ``manual``: the steps a user must follow where there is no direct link (a
  form, a licence click, a share page); ``fetch`` prints them and the
  ``cxrkit weights import`` command, and never scrapes.

``md5`` / ``sha256`` are digests the origin publishes for exactly this file (full
or leading hex digits), with ``digest_source`` saying where; a download that does
not match is refused. Without one the file is "unverifiable" (its sha256 is
recorded with every run), unless the source's own ``hash_prefix`` or file name
carries a hash.

The URL of every direct link can be redirected to a mirror with one setting,
``$CXRKIT_WEIGHTS_MIRROR`` (see :func:`mirrored`); hub files follow
``$HF_ENDPOINT`` as in every Hugging Face tool.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["FetchSpec", "MIRROR_ENV", "mirrored", "URL", "HUB", "MANUAL"]

#: base URL that replaces ``scheme://`` of every direct link: ``{mirror}/{host}/{path}?{query}``.
MIRROR_ENV = "CXRKIT_WEIGHTS_MIRROR"
URL, HUB, MANUAL = "url", "hub", "manual"
_HEX = re.compile(r"[0-9a-f]{4,128}")
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class FetchSpec:
    """How ``cxrkit weights fetch`` gets one source's file (exactly one of ``url``, ``hf_hub_id``, ``manual``).

    Attributes:
        url: direct ``http(s)`` link to the file.
        hf_hub_id: Hugging Face hub repository, ``"owner/name"``.
        hf_revision: the repository commit (40 hex digits) the file is pinned to; required with ``hf_hub_id``.
        hf_filename: path of the file inside the repository (default: the source's first file name).
        manual: the steps to get the file by hand (printed by ``fetch``, which then exits non-zero).
        filename: name the file is installed under (default: the source's first file name); must be
            one of the source's ``filenames``.
        md5: md5 the origin publishes for this file (full, or its leading hex digits).
        sha256: sha256 the origin publishes for this file (full, or its leading hex digits).
        digest_source: where ``md5`` / ``sha256`` are published (a URL), shown with them.
        size: size in bytes, if published (only for progress and a sanity check).
    """

    url: str = ""
    hf_hub_id: str = ""
    hf_revision: str = ""
    hf_filename: str = ""
    manual: str = ""
    filename: str = ""
    md5: str = ""
    sha256: str = ""
    digest_source: str = ""
    size: int | None = None

    def __post_init__(self) -> None:
        kinds = [k for k, v in ((URL, self.url), (HUB, self.hf_hub_id), (MANUAL, self.manual)) if v]
        if len(kinds) != 1:
            raise ValueError(f"FetchSpec needs exactly one of url, hf_hub_id, manual; got {kinds or 'none'}")
        if self.url and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"FetchSpec.url must be http(s), got {self.url!r}")
        if self.hf_hub_id and (self.hf_hub_id.count("/") != 1 or not _COMMIT.fullmatch(self.hf_revision)):
            raise ValueError(f"FetchSpec for {self.hf_hub_id!r}: hf_hub_id must be 'owner/name' and hf_revision "
                             f"a 40-hex commit hash (a branch name moves), got {self.hf_revision!r}")
        for name in ("md5", "sha256"):
            value = getattr(self, name)
            if value and not _HEX.fullmatch(value):
                raise ValueError(f"FetchSpec.{name} must be lowercase hex, got {value!r}")
        if "/" in self.filename or "\\" in self.filename:
            raise ValueError(f"FetchSpec.filename is a bare file name, got {self.filename!r}")

    @property
    def kind(self) -> str:
        """``"url"``, ``"hub"`` or ``"manual"``."""
        return URL if self.url else HUB if self.hf_hub_id else MANUAL

    def published_digests(self) -> dict[str, str]:
        """``{algorithm: digest or prefix}`` the origin publishes for this file."""
        return {alg: value for alg, value in (("md5", self.md5), ("sha256", self.sha256)) if value}

    def location(self) -> str:
        """Where the file comes from, in words (docs, ``weights info``)."""
        if self.kind == URL:
            return self.url
        if self.kind == HUB:
            return f"https://huggingface.co/{self.hf_hub_id} @ {self.hf_revision} ({self.hf_filename or 'file'})"
        return "manual: " + self.manual


def mirrored(url: str, mirror: str | None = None) -> str:
    """``url`` as served by the mirror in ``$CXRKIT_WEIGHTS_MIRROR`` (``url`` itself when none is set).

    The mirror keeps each origin's host and path: with ``CXRKIT_WEIGHTS_MIRROR=http://127.0.0.1:8000/m``,
    ``https://download.pytorch.org/models/resnet50-0676ba61.pth`` is fetched from
    ``http://127.0.0.1:8000/m/download.pytorch.org/models/resnet50-0676ba61.pth``.
    """
    base = (os.environ.get(MIRROR_ENV, "") if mirror is None else mirror).strip().rstrip("/")
    if not base:
        return url
    parts = urlsplit(url)
    return f"{base}/{parts.netloc}{parts.path}" + (f"?{parts.query}" if parts.query else "")
