"""MONAI bundles: where they live, and their generator (:mod:`cxrkit.bundle.generate`).

The committed bundles are in the repository's ``bundles/`` folder, beside the
``cxrkit`` package (cxrkit is installed editable, ``pip install -e .``).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["bundles_root", "find_bundle", "BundleNotFoundError"]


class BundleNotFoundError(FileNotFoundError):
    """No bundle folder where one was expected; the message says where it looked."""


def bundles_root(must_exist: bool = True) -> Path:
    """The repository's ``bundles/`` folder (the package's parent folder + ``bundles``).

    Raises:
        BundleNotFoundError: ``must_exist`` and the folder is absent (cxrkit installed
            from a wheel rather than from the repository).
    """
    root = Path(__file__).resolve().parents[2] / "bundles"
    if must_exist and not root.is_dir():
        raise BundleNotFoundError(
            f"no bundles/ folder at {root}: cxrkit's bundles ship with its source repository. Install cxrkit "
            "from a clone with `pip install -e .`, or pass a bundle folder path explicitly"
        )
    return root


def find_bundle(name_or_path: str | Path) -> Path:
    """A bundle folder from a path (``bundles/inat_swav``, a run folder) or a plugin name (``inat_swav``).

    Raises:
        BundleNotFoundError: neither a folder with ``configs/`` nor a bundle of that name.
    """
    path = Path(name_or_path).expanduser()
    if (path / "configs").is_dir():
        return path.resolve()
    if path.name == "configs" and path.is_dir():
        return path.parent.resolve()
    if len(path.parts) == 1:
        candidate = bundles_root(must_exist=False) / path.name
        if (candidate / "configs").is_dir():
            return candidate
    raise BundleNotFoundError(
        f"{name_or_path}: not a bundle folder (it needs a configs/ folder). Pass bundles/<plugin> "
        "(see `ls bundles`), a plugin name, or a run folder runs/<plugin>-<timestamp>"
    )
