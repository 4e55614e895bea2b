"""Installing a verified weight file into the local store (``cxrkit weights import``)."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cxrkit.weights.checkpoint import file_digests
from cxrkit.weights.errors import WeightError
from cxrkit.weights.load import LoadedWeights, load_state_dict
from cxrkit.weights.source import WeightSource, get_source
from cxrkit.weights.store import installed_path, weights_dir

__all__ = ["ImportResult", "import_weight_file"]

logger = logging.getLogger(__name__)


@dataclass
class ImportResult:
    """Outcome of :func:`import_weight_file`.

    Attributes:
        destination: where the file now is.
        loaded: the verification result (matched tensors, sha256, hash status).
        copied: ``False`` when an identical file was already installed.
    """

    destination: Path
    loaded: LoadedWeights
    copied: bool


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


def import_weight_file(
    source: WeightSource | str,
    file: str | os.PathLike[str],
    *,
    trust: bool = False,
    force: bool = False,
    root: str | os.PathLike[str] | None = None,
) -> ImportResult:
    """Verify ``file`` for ``source`` and copy it atomically into the local weight store.

    The file is stored as ``<root>/<plugin>/<name>``, where ``name`` is the file's
    own name if it is one of the source's expected names, else the first expected
    name, so :func:`~cxrkit.weights.store.find_weight_file` finds it afterwards.

    Args:
        source: a :class:`WeightSource` or a registered plugin name.
        file: the downloaded file.
        trust: allow full unpickling of a file the safe loader refuses (warns).
        force: replace an installed file with different content.
        root: store folder (default: ``$CXRKIT_WEIGHTS_DIR`` or ``~/.cache/cxrkit/weights``).

    Returns:
        An :class:`ImportResult`.

    Raises:
        WeightError: the file does not verify (nothing is copied), or a different file
            is already installed and ``force`` is False.
    """
    source = get_source(source)
    src = Path(file).expanduser()
    if not source.pretrained:
        raise WeightError(f"weight source '{source.name}' has no pretrained weights; there is nothing to import")
    if not src.is_file():
        raise WeightError(f"{src}: no such file; pass the path of the downloaded '{source.name}' weight file")
    loaded = load_state_dict(source, src, trust=trust)
    name = src.name if src.name in source.filenames else source.filenames[0]
    dest = installed_path(source, name, Path(root).expanduser() if root is not None else weights_dir())
    if dest.is_file():
        if dest.resolve() == src.resolve() or file_digests(dest)["sha256"] == loaded.sha256:
            logger.info("%s is already installed at %s", src, dest)
            return ImportResult(dest, loaded, copied=False)
        if not force:
            raise WeightError(
                f"{dest} already exists with different content (sha256 differs from {src}); "
                "pass force=True (--force) to replace it."
            )
    _atomic_copy(src, dest, loaded.sha256)
    logger.info("installed %s as %s (sha256 %s)", src, dest, loaded.sha256)
    return ImportResult(dest, loaded, copied=True)
