"""Bundle folders: their files, writing them, finding a bundle by path or plugin name, the repository's bundles/.

Every bundle is self-contained, in the MONAI model-zoo layout (:func:`bundle_files`):
``configs/train.yaml`` (the whole training config), ``configs/evaluate.yaml`` and
``configs/inference.yaml`` (short overrides of the training config, run as
``--config_file "['configs/train.yaml','configs/evaluate.yaml']"``), ``configs/metadata.json``,
``configs/logging.conf``, ``docs/README.md``, ``LICENSE`` and ``models/README.md``. All come from
the package's base config (:mod:`cxrkit.bundle.render`) and the plugin's ``WeightSource``, so one
bundle per plugin is generated, never edited:

* the repository's ``bundles/<plugin>/`` for every plugin cxrkit ships (:func:`shipped_plugins`),
  written by ``cxrkit bundle sync`` (:func:`sync_bundles`) and compared by ``cxrkit bundle check``
  (:func:`check_bundles`);
* ``cxrkit bundle write PLUGIN --output_dir DIR`` for any registered plugin, third-party included;
* ``cxrkit run training PLUGIN`` renders one into a cache folder (:func:`cached_bundle`).

A trained model lives in the run folder a training writes; its own ``evaluate.yaml`` and
``inference.yaml`` are self-contained (MONAI Label reads ``inference.yaml`` alone).
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
    GENERATED_KEY,
    RUN_IDS,
    BundleParams,
    comment_lines,
    generated_note,
    load_yaml,
    render_config,
    render_logging_conf,
    render_metadata,
    render_override,
    render_text,
)

__all__ = [
    "BundleNotFoundError",
    "CACHE_ENV",
    "OVERRIDE_KINDS",
    "bundle_files",
    "shipped_plugins",
    "write_bundle",
    "cached_bundle",
    "bundles_root",
    "find_bundle",
    "config_files",
    "is_override",
    "check_bundles",
    "sync_bundles",
]

logger = logging.getLogger(__name__)

#: environment variable naming the folder for bundles rendered by plugin name.
CACHE_ENV = "CXRKIT_BUNDLE_CACHE"
#: the configs of a bundle that override its ``configs/train.yaml`` (the model zoo's pattern).
OVERRIDE_KINDS = ("evaluate", "inference")


class BundleNotFoundError(FileNotFoundError):
    """No bundle where one was expected; the message says where it looked and what to pass instead."""


def bundle_files(plugin: str) -> dict[str, str]:
    """Every file of the self-contained bundle of ``plugin`` (MONAI model-zoo layout): relative path -> text.

    Each file starts by saying it is generated and by which command (:func:`cxrkit.bundle.render.generated_note`;
    ``configs/metadata.json`` as its first key, ``generated``).

    Raises:
        cxrkit.registry.RegistryError: no weight plugin of that name.
    """
    note = generated_note(plugin)
    params = BundleParams(plugin)
    files = {"configs/train.yaml": render_config("train", params)}
    files.update({f"configs/{kind}.yaml": render_override(kind, plugin) for kind in OVERRIDE_KINDS})
    metadata = {GENERATED_KEY: note, **render_metadata(params)}
    files["configs/metadata.json"] = json.dumps(metadata, indent=2) + "\n"
    files["configs/logging.conf"] = comment_lines(note) + render_logging_conf()
    files["docs/README.md"] = f"<!-- {note} -->\n" + render_text("README.md", plugin)
    files["LICENSE"] = comment_lines(note, prefix="") + "\n" + render_text("LICENSE", plugin)
    files["models/README.md"] = f"<!-- {note} -->\n" + render_text("models_README.md", plugin)
    return files


def shipped_plugins() -> list[str]:
    """The weight plugins cxrkit itself registers (every ``WeightSource`` of the registry whose distribution is
    cxrkit): the repository holds a ``bundles/<plugin>/`` for each."""
    from cxrkit.registry import weights

    return [name for name in weights.names() if weights.entry(name).distribution == "cxrkit"]


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


def is_override(config: str | os.PathLike) -> bool:
    """Whether the config file ``config`` overrides its folder's ``train.yaml``: it has an entry point (``run``)
    but sets no ``plugin``, which every whole config does (JSON is YAML). ``False`` for a file that cannot be read
    as a mapping."""
    try:
        data = load_yaml(Path(config).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - not ours to judge here: MONAI reports a broken config
        return False
    return isinstance(data, dict) and "run" in data and "plugin" not in data


def config_files(bundle: str | os.PathLike, kind: str) -> list[Path]:
    """The config file(s) MONAI runs for ``kind`` of the bundle folder ``bundle``, in merge order.

    A self-contained config is one file (every training config; a run folder's evaluate and inference configs);
    a bundle's ``evaluate.yaml`` / ``inference.yaml`` overrides ``configs/train.yaml`` and follows it, as in the
    MONAI command its header shows.

    Raises:
        FileNotFoundError: the bundle has no ``kind`` config, or an override's ``train.yaml`` is missing.
    """
    root = Path(bundle)
    config = root / "configs" / f"{kind}.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{root} has no {RUN_IDS[kind]} config ({config} does not exist)")
    if kind == "train" or not is_override(config):
        return [config]
    train = root / "configs" / "train.yaml"
    if not train.is_file():
        raise FileNotFoundError(f"{config} overrides the training config {train}, which is missing")
    return [train, config]


def _folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _root(root: str | os.PathLike | None) -> Path:
    base = Path(root).expanduser() if root else bundles_root()
    if not base.is_dir():
        raise BundleNotFoundError(f"--bundles_dir {base}: no such folder")
    return base


def check_bundles(root: str | os.PathLike | None = None) -> list[str]:
    """Differences between a ``bundles/`` folder and what ``cxrkit bundle sync`` writes (empty: up to date).

    Every plugin cxrkit ships needs its folder; a folder of another registered plugin (a third party's) is
    checked too; one of no plugin (a leftover such as ``_base``) is reported. Each problem names the file.

    Raises:
        BundleNotFoundError: no such folder.
    """
    from cxrkit.registry import weights

    base = _root(root)
    present = _folders(base)
    known = set(weights.names())
    problems = [f"{base / name}: no weight plugin of that name (remove the folder)"
                for name in present if name not in known]
    for name in sorted(set(shipped_plugins()) | (set(present) & known)):
        folder = base / name
        files = bundle_files(name)
        if not folder.is_dir():
            problems.append(f"{folder}: missing (the '{name}' weight source has no bundle yet)")
            continue
        for rel, text in files.items():
            path = folder / rel
            if not path.is_file():
                problems.append(f"{path}: missing")
            elif path.read_text(encoding="utf-8") != text:
                problems.append(f"{path}: differs from what `cxrkit bundle sync` writes")
        extra = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        problems += [f"{folder / rel}: not part of the bundle (remove it)" for rel in extra if rel not in files]
    return problems


def sync_bundles(root: str | os.PathLike | None = None, plugins: Sequence[str] = ()) -> list[Path]:
    """Write or refresh ``bundles/<plugin>/`` for every plugin cxrkit ships, every other plugin folder present,
    and ``plugins``. Nothing is deleted: :func:`check_bundles` names what to remove by hand.

    Returns:
        The files that changed.

    Raises:
        BundleNotFoundError: no such folder.
        cxrkit.registry.RegistryError: an unknown plugin.
    """
    from cxrkit.registry import weights

    base = _root(root)
    files = {name: bundle_files(name) for name in plugins}  # an unknown name fails before anything is written
    names = sorted(set(plugins) | set(shipped_plugins()) | (set(_folders(base)) & set(weights.names())))
    changed: list[Path] = []
    for name in names:
        changed += _write_files(base / name, files.get(name) or bundle_files(name))
    return changed
