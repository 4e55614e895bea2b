"""Installing a verified weight file into the local store (``cxrkit weights import``).

A file whose digest does not match the hash its origin publishes is refused
(:class:`~cxrkit.weights.errors.UnverifiedWeightError`, whose message prints the
file's sha256 and the exact option to accept it). Accepted with
``accept_sha256=<that sha256>`` (``--accept_sha256``), it is installed as
``<plugin>/unverified-<name>``, never under the official name, and marked
unverified wherever it is used (see :mod:`cxrkit.weights.provenance`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from cxrkit.weights.checkpoint import file_digests
from cxrkit.weights.errors import UnverifiedWeightError, WeightError, WeightHashWarning
from cxrkit.weights.load import LoadedWeights, load_state_dict
from cxrkit.weights.provenance import UNVERIFIED, UNVERIFIED_PREFIX, normalise_sha256, published_text
from cxrkit.weights.source import WeightSource, get_source
from cxrkit.weights.store import find_weight_file, installed_path, weights_dir

__all__ = ["ImportResult", "import_weight_file"]

logger = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """Outcome of :func:`import_weight_file`.

    Attributes:
        destination: where the file now is.
        loaded: the verification result (matched tensors, sha256, hash status).
        copied: ``False`` when an identical file was already installed.
        shadowed_by: an installed file under an official name that is found first
            (so an accepted unverified file is not the one runs use), else ``None``.
    """

    destination: Path
    loaded: LoadedWeights
    copied: bool
    shadowed_by: Path | None = None

    @property
    def verification(self) -> str:
        """``"verified"``, ``"unverified"`` (accepted) or ``"unverifiable"`` (no published hash)."""
        return self.loaded.verification


def _atomic_copy(src: Path, dest: Path, sha256: str) -> None:
    """Copy ``src`` to ``dest`` through a temporary file in the same folder and ``os.replace``.

    Readers never see a partial ``dest``: it is either the old file (or absent) or the
    complete new one. The copy is re-hashed before it replaces anything.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
            shutil.copyfileobj(inp, out, length=1 << 20)
            out.flush()
            os.fsync(out.fileno())
        copied = file_digests(tmp)["sha256"]
        if copied != sha256:
            raise WeightError(f"copy of {src} to {tmp} is corrupt (sha256 {copied}, expected {sha256}); disk full?")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _refuse_unverified(source: WeightSource, src: Path, loaded: LoadedWeights) -> UnverifiedWeightError:
    sha = loaded.sha256
    return UnverifiedWeightError(
        f"{src}: sha256 {sha} does not match what {source.origin} publishes for plugin '{source.name}' "
        f"({published_text(source, src.name)}). The file may be damaged, re-saved, another release, or not these "
        "weights at all: get it again from the origin and compare. Nothing was installed.\n"
        "To use this exact file anyway as UNVERIFIED weights (installed as "
        f"{UNVERIFIED_PREFIX}{source.filenames[0]}, and marked unverified in `cxrkit weights list`, in every run's "
        "weights.json and in reports), run:\n"
        f"  cxrkit weights import {source.name} {src} --accept_sha256 {sha}\n"
        f"(accept_sha256=\"{sha}\" in Python).",
        sha,
    )


def _official_file(source: WeightSource) -> Path | None:
    """The file under an official name that runs find first, if any (it wins over an unverified one)."""
    try:
        found = find_weight_file(source)
    except WeightError:
        return None
    return None if found.name.startswith(UNVERIFIED_PREFIX) else found


def _check_accepted(accept_sha256: str | None, loaded: LoadedWeights, src: Path) -> bool:
    """Whether the user accepted this file; an accepted hash that is not the file's is an error."""
    if accept_sha256 is None:
        return False
    try:
        accepted = normalise_sha256(accept_sha256, "--accept_sha256 (accept_sha256)")
    except ValueError as exc:
        raise WeightError(str(exc)) from None
    if accepted != loaded.sha256:
        raise WeightError(
            f"--accept_sha256 {accepted} is not the sha256 of {src} ({loaded.sha256}); nothing was installed. "
            "Accept only the file you checked."
        )
    return True


def import_weight_file(
    source: WeightSource | str,
    file: str | os.PathLike[str],
    *,
    trust: bool = False,
    force: bool = False,
    root: str | os.PathLike[str] | None = None,
    accept_sha256: str | None = None,
) -> ImportResult:
    """Verify ``file`` for ``source`` and copy it atomically into the local weight store.

    The file is stored as ``<root>/<plugin>/<name>``, where ``name`` is the file's
    own name if it is one of the source's expected names, else the first expected
    name, so :func:`~cxrkit.weights.store.find_weight_file` finds it afterwards. An
    accepted unverified file is stored as ``<root>/<plugin>/unverified-<name>``.

    Args:
        source: a :class:`WeightSource` or a registered plugin name.
        file: the downloaded file.
        trust: allow full unpickling of a file the safe loader refuses (warns).
        force: replace an installed file with different content.
        root: store folder (default: ``$CXRKIT_WEIGHTS_DIR`` or ``~/.cache/cxrkit/weights``).
        accept_sha256: the file's full sha256, to install it although it does not match the
            origin's published hash (it is then installed and recorded as unverified).

    Returns:
        An :class:`ImportResult`.

    Raises:
        UnverifiedWeightError: the origin publishes a hash, the file does not match it, and
            ``accept_sha256`` does not name it (the message prints the file's sha256 and the option).
        WeightError: the file does not verify (nothing is copied), ``accept_sha256`` is not the
            file's sha256, or a different file is already installed and ``force`` is False.
    """
    source = get_source(source)
    src = Path(file).expanduser()
    if not source.pretrained:
        raise WeightError(f"weight source '{source.name}' has no pretrained weights; there is nothing to import")
    if not src.is_file():
        raise WeightError(f"{src}: no such file; pass the path of the downloaded '{source.name}' weight file")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", WeightHashWarning)  # a mismatch is refused or accepted below, not warned
        loaded = load_state_dict(source, src, trust=trust)
    accepted = _check_accepted(accept_sha256, loaded, src)
    unverified = loaded.verification == UNVERIFIED
    if unverified and not accepted:
        raise _refuse_unverified(source, src, loaded)
    name = src.name if src.name in source.filenames else source.filenames[0]
    store = Path(root).expanduser() if root is not None else weights_dir()
    dest = installed_path(source, UNVERIFIED_PREFIX + name if unverified else name, store)
    shadowed_by = _official_file(source) if unverified else None
    if dest.is_file():
        if dest.resolve() == src.resolve() or file_digests(dest)["sha256"] == loaded.sha256:
            logger.info("%s is already installed at %s", src, dest)
            return ImportResult(dest, loaded, copied=False, shadowed_by=shadowed_by)
        if not force:
            raise WeightError(
                f"{dest} already exists with different content (sha256 differs from {src}); "
                "pass force=True (--force) to replace it."
            )
    _atomic_copy(src, dest, loaded.sha256)
    logger.info("installed %s as %s (sha256 %s, %s)", src, dest, loaded.sha256, loaded.verification)
    return ImportResult(dest, loaded, copied=True, shadowed_by=shadowed_by)
