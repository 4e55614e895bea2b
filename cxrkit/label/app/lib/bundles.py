"""Which trained cxrkit bundles the app serves, from the ``--conf`` options of ``monailabel start_server``.

* ``--conf models NAME[,NAME]`` - folders under the app's ``model/`` folder (``all``: every one there);
* ``--conf bundles DIR[,DIR]`` - run or bundle folders anywhere, served under their folder names.

A bundle qualifies when it holds ``configs/inference.yaml`` (or ``.json``),
``configs/metadata.json`` and ``models/model.pt`` (or ``models/model.ts``).
Nothing is ever downloaded: there is no model zoo lookup.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

from cxrkit.bundle.folders import is_override
from cxrkit.runfolder import RunPaths

__all__ = ["BundleConfigError", "find_bundles", "is_servable", "model_name"]


class BundleConfigError(ValueError):
    """The ``--conf models`` / ``--conf bundles`` options name nothing servable; the message says what to pass."""


def is_servable(folder: Path) -> bool:
    """Whether ``folder`` holds an inference config, metadata and a trained model (:meth:`RunPaths.is_servable`)."""
    return RunPaths.of(folder).is_servable()


def model_name(folder: Path) -> str:
    """A URL-safe model name from a folder name (``inat_swav-20240101-120000`` stays as it is)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", folder.name).strip("._")
    return name or "model"


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def find_bundles(app_dir: str | os.PathLike, conf: Mapping[str, str]) -> dict[str, Path]:
    """The bundles to serve, by model name.

    Args:
        app_dir: the app folder (its ``model/`` folder holds named bundles).
        conf: the ``--conf`` key/value pairs of ``monailabel start_server``.

    Returns:
        ``{model name: bundle folder}``, in the order given.

    Raises:
        BundleConfigError: nothing given, a name or path that is not a trained bundle, or a name used twice.
    """
    model_dir = Path(app_dir) / "model"
    found: dict[str, Path] = {}

    def add(name: str, folder: Path, origin: str) -> None:
        if not is_servable(folder):
            raise BundleConfigError(
                f"{origin} {folder}: not a trained cxrkit bundle (it needs configs/inference.yaml, "
                "configs/metadata.json and models/model.pt); pass a run folder written by `cxrkit run training`"
            )
        config = RunPaths.of(folder).inference_config
        if is_override(config):  # MONAI Label's BundleInferTask reads the inference config alone
            raise BundleConfigError(
                f"{origin} {config} overrides configs/train.yaml (a generated bundle's model-zoo pattern), and "
                "MONAI Label reads the inference config alone; pass the run folder `cxrkit run training` wrote"
            )
        if name in found and found[name] != folder.resolve():
            raise BundleConfigError(
                f"two models are named {name!r} ({found[name]} and {folder}); rename one folder or link it "
                "under the app's model/ folder with another name"
            )
        found[name] = folder.resolve()

    names = _split(conf.get("models"))
    if names == ["all"]:
        names = sorted(p.name for p in model_dir.iterdir() if is_servable(p)) if model_dir.is_dir() else []
        if not names:
            raise BundleConfigError(f"--conf models all: no trained bundle under {model_dir}")
    for name in names:
        add(name, model_dir / name, "--conf models:")
    for path in _split(conf.get("bundles")):
        folder = Path(path).expanduser()
        add(model_name(folder.resolve()), folder, "--conf bundles:")
    if not found:
        available = sorted(p.name for p in model_dir.iterdir() if p.is_dir()) if model_dir.is_dir() else []
        raise BundleConfigError(
            "no model to serve: pass --conf bundles RUN_DIR[,RUN_DIR] (run folders written by `cxrkit run "
            f"training`) or --conf models NAME[,NAME] for folders under {model_dir}"
            + (f" (there: {', '.join(available)})" if available else "")
        )
    return found
