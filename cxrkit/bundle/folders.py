"""Bundle folders: their files, writing them, finding a bundle by path or plugin name, the repository's bundles/.

Two layouts come from the package's base config (:mod:`cxrkit.bundle.render`):

* **self-contained** (:func:`bundle_files`, MONAI model-zoo layout): ``configs/train.yaml``,
  ``configs/metadata.json``, ``configs/logging.conf``, ``docs/README.md``, ``LICENSE`` and
  ``models/README.md``. ``cxrkit bundle write PLUGIN --output_dir DIR`` writes one for any
  registered plugin, and ``cxrkit run training PLUGIN`` renders one into a cache folder.
* **thin** (:func:`thin_files`): ``configs/train.yaml`` holding only what differs from the base
  (``plugin: NAME``) and ``configs/metadata.json``; the repository's ``bundles/<plugin>/``.
  ``bundles/_base/configs/`` holds the base (:func:`base_files`). MONAI runs the two as a list
  (``--config_file "['bundles/_base/configs/train.yaml','bundles/<plugin>/configs/train.yaml']"``),
  and so does :func:`config_files`. A config without MONAI's ``run`` id is an override of
  ``../_base/configs/<kind>.yaml``.

Bundles hold training only: evaluation and inference need a trained model, so a run folder
gets its own self-contained ``evaluate.yaml`` and ``inference.yaml`` when it is trained.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

from cxrkit.bundle.render import (
    RUN_IDS,
    BundleParams,
    base_config,
    load_yaml,
    render_config,
    render_logging_conf,
    render_metadata,
    render_override,
    render_text,
)

__all__ = [
    "BundleNotFoundError",
    "BASE",
    "CACHE_ENV",
    "bundle_files",
    "thin_files",
    "base_files",
    "write_bundle",
    "cached_bundle",
    "bundles_root",
    "find_bundle",
    "config_files",
    "check_bundles",
    "sync_bundles",
]

logger = logging.getLogger(__name__)

#: the folder of ``bundles/`` that holds the base configs.
BASE = "_base"
#: environment variable naming the folder for bundles rendered by plugin name.
CACHE_ENV = "CXRKIT_BUNDLE_CACHE"
_COMMITTED_KINDS = ("train",)  # the configs a bundle without a model can run


class BundleNotFoundError(FileNotFoundError):
    """No bundle where one was expected; the message says where it looked and what to pass instead."""


def _metadata_text(plugin: str) -> str:
    return json.dumps(render_metadata(BundleParams(plugin)), indent=2) + "\n"


def bundle_files(plugin: str) -> dict[str, str]:
    """Every file of a self-contained bundle of ``plugin`` (MONAI model-zoo layout): relative path -> text.

    Raises:
        cxrkit.registry.RegistryError: no weight plugin of that name.
    """
    params = BundleParams(plugin)
    files = {f"configs/{kind}.yaml": render_config(kind, params) for kind in _COMMITTED_KINDS}
    files["configs/metadata.json"] = _metadata_text(plugin)
    files["configs/logging.conf"] = render_logging_conf()
    files["docs/README.md"] = render_text("README.md", plugin)
    files["LICENSE"] = render_text("LICENSE", plugin)
    files["models/README.md"] = render_text("models_README.md", plugin)
    return files


def thin_files(plugin: str) -> dict[str, str]:
    """The files of ``bundles/<plugin>/``: what differs from ``bundles/_base`` (overrides and metadata)."""
    params = BundleParams(plugin)
    files = {f"configs/{kind}.yaml": render_override(kind, params) for kind in _COMMITTED_KINDS}
    files["configs/metadata.json"] = _metadata_text(plugin)
    return files


def base_files() -> dict[str, str]:
    """The files of ``bundles/_base/``: the base configs and ``logging.conf``."""
    files = {f"configs/{kind}.yaml": base_config(kind) for kind in _COMMITTED_KINDS}
    files["configs/logging.conf"] = render_logging_conf()
    return files


def _write_files(folder: Path, files: Mapping[str, str]) -> list[Path]:
    """Write ``files`` under ``folder``; returns the files whose content changed."""
    changed = []
    for rel, text in files.items():
        path = folder / rel
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def write_bundle(plugin: str, output_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a self-contained bundle of ``plugin`` into ``output_dir``, runnable by MONAI's own CLI.

    Args:
        plugin: a registered weight plugin, built-in or third-party.
        output_dir: the bundle folder (created).
        overwrite: replace the bundle's files in a folder that already holds files (others are kept).

    Returns:
        The bundle folder.

    Raises:
        cxrkit.registry.RegistryError: no weight plugin of that name.
        FileExistsError: ``output_dir`` is a file, or holds files and ``overwrite`` is false.
    """
    folder = Path(output_dir).expanduser().resolve()
    files = bundle_files(plugin)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"--output_dir {folder}: a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(
            f"--output_dir {folder} is not empty; pass an empty or new folder, or --overwrite to replace the "
            "bundle's files there (nothing else is touched)"
        )
    _write_files(folder, files)
    return folder


def _cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxrkit" / "bundles"


def cached_bundle(plugin: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """A self-contained bundle of ``plugin`` rendered into the bundle cache, in a folder named after its
    content, so concurrent processes (torchrun) and other cxrkit versions never see a half-written or stale
    bundle.

    Args:
        plugin: a registered weight plugin.
        cache_dir: the cache folder (default ``$CXRKIT_BUNDLE_CACHE`` or ``~/.cache/cxrkit/bundles``, and
            the system's temporary folder when that cannot be written).

    Raises:
        cxrkit.registry.RegistryError: no weight plugin of that name.
        OSError: ``cache_dir`` cannot be written.
    """
    files = bundle_files(plugin)
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _cache_root()
    target = root / f"{plugin}-{digest}"
    if target.is_dir():
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{plugin}-", dir=root))
    except OSError as exc:  # a read-only home: the system's temporary folder will do
        fallback = Path(tempfile.gettempdir()) / f"cxrkit-bundles-{os.getuid() if hasattr(os, 'getuid') else 0}"
        if cache_dir is not None:
            raise
        logger.warning("cannot write the bundle cache %s (%s); using %s (set %s to choose)", root, exc, fallback,
                       CACHE_ENV)
        return cached_bundle(plugin, fallback)
    _write_files(staging, files)
    try:
        staging.rename(target)  # atomic; fails when another process got there first
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not target.is_dir():
            raise
    return target


def bundles_root(must_exist: bool = True) -> Path:
    """The repository's ``bundles/`` folder (beside the ``cxrkit`` package of an editable checkout).

    Raises:
        BundleNotFoundError: ``must_exist`` and the folder is absent (cxrkit installed from a wheel).
    """
    root = Path(__file__).resolve().parents[2] / "bundles"
    if must_exist and not root.is_dir():
        raise BundleNotFoundError(
            f"no bundles/ folder at {root}: it is part of cxrkit's source repository, not of an installed "
            "cxrkit. Pass --bundles_dir DIR, or write a bundle with `cxrkit bundle write PLUGIN --output_dir DIR`"
        )
    return root


def find_bundle(name_or_path: str | os.PathLike) -> Path:
    """A bundle folder from a path (``bundles/inat_swav``, a written bundle, a run folder) or a plugin name.

    A plugin name (``inat_swav``, a third party's ``xrv_resnet50``) that is not a folder here gets
    a self-contained bundle rendered from the package (:func:`cached_bundle`), so it works from
    any install, with or without the repository.

    Raises:
        BundleNotFoundError: neither a folder with ``configs/`` nor a registered weight plugin.
    """
    path = Path(name_or_path).expanduser()
    if (path / "configs").is_dir():
        return path.resolve()
    if path.name == "configs" and path.is_dir():
        return path.parent.resolve()
    if len(path.parts) == 1:
        from cxrkit.registry import weights

        if path.name in weights.names():
            return cached_bundle(path.name)
    raise BundleNotFoundError(
        f"{name_or_path}: not a bundle folder (it needs a configs/ folder) nor a weight plugin name. Pass a "
        "plugin name (`cxrkit list weights`), a folder `cxrkit bundle write` made, or a run folder "
        "runs/<plugin>-<timestamp>"
    )


def _is_override(config: Path) -> bool:
    try:
        data = load_yaml(config.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - not ours to judge here: MONAI reports a broken config
        return False
    return isinstance(data, dict) and "run" not in data


def config_files(bundle: str | os.PathLike, kind: str) -> list[Path]:
    """The config file(s) MONAI runs for ``kind`` of the bundle folder ``bundle``, in merge order.

    A self-contained config is one file; an override (no ``run`` id) follows its base
    ``../_base/configs/<kind>.yaml``, as in the MONAI command its header shows.

    Raises:
        FileNotFoundError: the bundle has no ``kind`` config, or an override's base is missing.
    """
    root = Path(bundle)
    config = root / "configs" / f"{kind}.yaml"
    if not config.is_file():
        hint = (" A plugin's bundle holds training only: evaluation and inference need a trained model, so pass "
                "the run folder `cxrkit run training` wrote (runs/<plugin>-<timestamp>)" if kind != "train" else "")
        raise FileNotFoundError(f"{root} has no {RUN_IDS[kind]} config ({config} does not exist).{hint}")
    if not _is_override(config):
        return [config]
    base = root.parent / BASE / "configs" / f"{kind}.yaml"
    if not base.is_file():
        raise FileNotFoundError(
            f"{config} holds only what differs from the base config {base}, which is missing. Use the whole "
            f"bundles/ folder, or a self-contained bundle: `cxrkit bundle write {root.name} --output_dir DIR`"
        )
    return [base, config]


def _committed(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def check_bundles(root: str | os.PathLike | None = None) -> list[str]:
    """Differences between a ``bundles/`` folder and what the package renders (empty: up to date).

    Checks ``_base/`` and every plugin folder present; a built-in plugin needs no folder.

    Raises:
        BundleNotFoundError: no such folder.
    """
    from cxrkit.registry import weights

    base = Path(root).expanduser() if root else bundles_root()
    if not base.is_dir():
        raise BundleNotFoundError(f"--bundles_dir {base}: no such folder")
    known = set(weights.names())
    expected = {BASE: base_files()}
    problems = []
    for name in _committed(base):
        if name in known:
            expected[name] = thin_files(name)
        else:
            problems.append(f"{base / name}: no weight plugin of that name (remove the folder)")
    for name, files in expected.items():
        for rel, text in files.items():
            path = base / name / rel
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{path}: differs from what cxrkit renders")
        extra = sorted(str(p.relative_to(base / name)) for p in (base / name).rglob("*") if p.is_file()) \
            if (base / name).is_dir() else []
        problems += [f"{base / name / rel}: not part of the bundle (remove it)" for rel in extra if rel not in files]
    return problems


def sync_bundles(root: str | os.PathLike | None = None, plugins: Sequence[str] = ()) -> list[Path]:
    """Rewrite ``bundles/_base`` and every plugin folder present (plus ``plugins``) from the package.

    Returns:
        The files that changed.

    Raises:
        BundleNotFoundError: no such folder.
        cxrkit.registry.RegistryError: an unknown plugin.
    """
    base = Path(root).expanduser() if root else bundles_root()
    if not base.is_dir():
        raise BundleNotFoundError(f"--bundles_dir {base}: no such folder")
    from cxrkit.registry import weights

    names = sorted(set(plugins) | (set(_committed(base)) & set(weights.names())))
    changed = _write_files(base / BASE, base_files())
    for name in names:
        changed += _write_files(base / name, thin_files(name))
    return changed
