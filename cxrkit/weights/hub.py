"""Getting a file from a Hugging Face hub repository, pinned to a commit, through ``huggingface_hub``.

``huggingface_hub`` owns the download and its cache, so everything a Hugging Face
user expects works: the cache under ``$HF_HOME`` / ``$HF_HUB_CACHE`` (a file
already there is used without a download), offline mode (``HF_HUB_OFFLINE=1``),
tokens for gated repositories (``HF_TOKEN`` or ``hf auth login``) and
``$HF_ENDPOINT``. The environment is read at each call (``huggingface_hub`` reads
it once, at import), so a setting changed in a running process is honoured too.

The hub names an LFS file's blob by its sha256 (the ``X-Linked-Etag`` of the
resolve request); :func:`hub_file` returns it, so the download is checked against
the digest the hub publishes.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cxrkit.weights.download import FetchError
from cxrkit.weights.fetchspec import FetchSpec

__all__ = ["hub_file", "hub_cache_dir"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "on", "yes", "true"}


def hub_cache_dir() -> Path:
    """The hub cache folder ``huggingface_hub`` uses: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def _offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in _TRUE


def hub_file(spec: FetchSpec, filename: str, what: str, timeout: float = 30.0) -> tuple[Path, str | None]:
    """The cached path of ``spec``'s file (downloaded if not cached) and the sha256 the hub publishes for it.

    Args:
        spec: a hub :class:`FetchSpec` (``hf_hub_id``, ``hf_revision``).
        filename: the file's path in the repository.
        what: who is fetching, for messages.
        timeout: seconds for the metadata request.

    Returns:
        ``(path, sha256 or None)``: ``None`` when the file is not an LFS file (its blob is named by a git sha1).

    Raises:
        FetchError: ``huggingface_hub`` missing, offline and not cached, gated or missing repository,
            unknown revision or file, or a network failure (one line each, with what to do).
    """
    try:
        # optional dependency (the `hub` extra), imported here so cxrkit works without it
        import huggingface_hub
        from huggingface_hub import errors as hf_errors
    except ImportError:
        raise FetchError(f"{what} is published on the Hugging Face hub ({spec.hf_hub_id}); install "
                         "huggingface_hub first: pip install 'cxrkit[hub]'") from None
    repo = f"{spec.hf_hub_id}@{spec.hf_revision[:12]}:{filename}"
    endpoint = (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    try:
        path = huggingface_hub.hf_hub_download(
            spec.hf_hub_id, filename, revision=spec.hf_revision, cache_dir=hub_cache_dir(), endpoint=endpoint,
            local_files_only=_offline(), etag_timeout=timeout)
    except hf_errors.GatedRepoError:
        raise FetchError(f"{what}: {repo} is a gated repository: accept its terms on "
                         f"https://huggingface.co/{spec.hf_hub_id} with your account, then log in "
                         "(`hf auth login` or HF_TOKEN) and fetch again") from None
    except hf_errors.RepositoryNotFoundError:
        raise FetchError(f"{what}: repository {spec.hf_hub_id} not found on {endpoint or 'the hub'} (private? "
                         "log in with `hf auth login` or set HF_TOKEN)") from None
    except hf_errors.RevisionNotFoundError:
        raise FetchError(f"{what}: revision {spec.hf_revision} of {spec.hf_hub_id} not found") from None
    except hf_errors.LocalEntryNotFoundError as exc:
        cause = exc.__cause__
        why = f" ({str(cause).splitlines()[0]})" if cause is not None and str(cause) else ""
        how = ("HF_HUB_OFFLINE is set and the file is not in the hub cache " + str(hub_cache_dir())
               if _offline() else f"the hub did not answer{why} and the file is not cached")
        raise FetchError(f"{what}: {repo}: {how}; fetch it once online (or unset HF_HUB_OFFLINE)") from None
    except hf_errors.EntryNotFoundError:
        raise FetchError(f"{what}: {filename} is not in {spec.hf_hub_id} at {spec.hf_revision}") from None
    except (hf_errors.HfHubHTTPError, OSError) as exc:
        if isinstance(exc, OSError) and getattr(exc, "errno", None) is not None and not isinstance(
                exc, hf_errors.HfHubHTTPError):
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FetchError(f"{what}: {repo} on {endpoint or 'the hub'}: {first}; fetch again later") from None
    blob = Path(path).resolve().name  # snapshots/<commit>/<file> -> blobs/<etag>
    return Path(path), blob if _SHA256.fullmatch(blob) else None
