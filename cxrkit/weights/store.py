"""Where weight files live on this machine, and how a source's file is found.

Search order for a source's file (nothing is downloaded here: only ``cxrkit weights fetch`` downloads):

1. an explicit path (a file, or a folder holding one of the expected names);
2. ``$CXRKIT_WEIGHTS_DIR``;
3. ``~/.cache/cxrkit/weights/``;
4. torch hub's checkpoint cache (``torch.hub.get_dir()/checkpoints``), only for
   sources with ``search_torch_hub`` (torchvision model-zoo files).

In each folder the file is looked for under a sub-folder named after the plugin
(where ``cxrkit weights import`` puts it, so generic names such as CheXNet's
``model.pth.tar`` cannot collide) and then directly in the folder.

Only when no folder holds a file under an official name is an accepted
unverified file (``<plugin>/unverified-<name>``, installed by ``cxrkit weights
import --accept_sha256``) used; loading it marks the run "unverified" (see
:mod:`cxrkit.weights.provenance`).
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrkit.weights.errors import WeightError, WeightFileNotFoundError
from cxrkit.weights.provenance import UNVERIFIED_PREFIX
from cxrkit.weights.source import WeightSource

__all__ = ["WEIGHTS_DIR_ENV", "weights_dir", "search_dirs", "find_weight_file", "installed_path"]

WEIGHTS_DIR_ENV = "CXRKIT_WEIGHTS_DIR"


def weights_dir() -> Path:
    """The folder ``cxrkit weights import`` writes to: ``$CXRKIT_WEIGHTS_DIR`` or ``~/.cache/cxrkit/weights``."""
    env = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxrkit" / "weights"


def _torch_hub_checkpoints() -> Path:
    import torch.hub  # local import: keeps `cxrkit list` free of torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def search_dirs(source: WeightSource) -> list[Path]:
    """The folders searched for ``source``'s file, in order (existing or not)."""
    dirs = []
    env = os.environ.get(WEIGHTS_DIR_ENV, "").strip()
    if env:
        dirs.append(Path(env).expanduser())
    dirs.append(Path.home() / ".cache" / "cxrkit" / "weights")
    if source.search_torch_hub:
        dirs.append(_torch_hub_checkpoints())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def installed_path(source: WeightSource, filename: str, root: Path | None = None) -> Path:
    """Where ``cxrkit weights import`` stores ``filename`` for ``source``."""
    return (root or weights_dir()) / source.name / filename


def _places(source: WeightSource, folder: Path, hub: bool = False) -> list[Path]:
    """The folder's plugin sub-folder, then the folder itself (torch hub keeps files flat)."""
    return [folder] if hub else [folder / source.name, folder]


def _candidates(source: WeightSource, folder: Path, hub: bool = False) -> list[Path]:
    return [place / f for place in _places(source, folder, hub) for f in source.filenames]


def _unverified(source: WeightSource, folder: Path) -> list[Path]:
    """Accepted unverified files in the folder's plugin sub-folder (where ``import`` puts them)."""
    return [folder / source.name / (UNVERIFIED_PREFIX + f) for f in source.filenames]


def _not_found(source: WeightSource, looked: list[Path], reason: str) -> WeightFileNotFoundError:
    names = ", ".join(source.filenames)
    places = "\n".join(f"  {p}" for p in looked)
    return WeightFileNotFoundError(
        f"{reason}\nExpected file name: {names}\nLooked in:\n{places}\nPublished at: {source.origin}\n"
        f"Get it with:\n  {source.fetch_command()}\n(cxrkit downloads only in that command; it prints the steps "
        f"for a file without a direct link). A file you already have: `{source.import_command()}`, "
        "or pass its path explicitly (weights_path=... in Python)."
    )


def find_weight_file(source: WeightSource, path: str | os.PathLike[str] | None = None) -> Path:
    """Locate ``source``'s weight file on this machine.

    Args:
        source: the weight source.
        path: an explicit file (used as is, whatever its name) or a folder to
            search first; it wins over every default location.

    Returns:
        The absolute path of an existing file.

    Raises:
        WeightError: ``source`` has no pretrained weights (``random``).
        WeightFileNotFoundError: nothing found; the message names the expected
            file name, every place looked, the origin and the import command.
    """
    if not source.pretrained:
        raise WeightError(f"weight source '{source.name}' has no pretrained weights, so there is no file to find")
    if path is not None:
        explicit = Path(path).expanduser()
        if explicit.is_file():
            return explicit.resolve()
        if explicit.is_dir():
            looked = _candidates(source, explicit) + _unverified(source, explicit)
            for candidate in looked:
                if candidate.is_file():
                    return candidate.resolve()
            raise _not_found(source, _places(source, explicit),
                             f"no weight file for plugin '{source.name}' in the folder {explicit}")
        raise _not_found(source, [explicit], f"weight file for plugin '{source.name}' does not exist: {explicit}")
    folders = search_dirs(source)
    hub = _torch_hub_checkpoints() if source.search_torch_hub else None
    for folder in folders:
        for candidate in _candidates(source, folder, folder == hub):
            if candidate.is_file():
                return candidate.resolve()
    for folder in folders:  # an official file anywhere wins over an accepted unverified one
        for candidate in _unverified(source, folder) if folder != hub else ():
            if candidate.is_file():
                return candidate.resolve()
    looked = [p for folder in folders for p in _places(source, folder, folder == hub)]
    raise _not_found(source, looked, f"weights for plugin '{source.name}' not found on this machine.")
