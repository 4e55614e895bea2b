"""Running a bundle's training, evaluate or inference config: the one way cxrkit starts a bundle workflow.

:func:`run_bundle` is what ``cxrkit run``, ``cxrkit compare``, ``cxrkit demo``,
the linear probe and the benchmarks call. It is the Python form of::

    python -m monai.bundle run training --config_file BUNDLE/configs/train.yaml --bundle_root BUNDLE ...

(a bundle's evaluate or inference override runs on its ``configs/train.yaml``, as the list
``configs/train.yaml``, ``configs/evaluate.yaml``: :func:`cxrkit.bundle.config_files`). It takes a bundle
folder, a plugin name (its bundle rendered from the package: :func:`cxrkit.bundle.find_bundle`) or a
run folder, sets ``bundle_root`` to it and runs MONAI's ``ConfigWorkflow``
(:func:`monai.bundle.scripts.create_workflow`, ``run``, ``finalize``: what
:func:`monai.bundle.run` does) with the overrides. A training run is handed
the config it runs, every override applied (:class:`cxrkit.engine.record.ConfigSnapshot`),
so the run folder's ``configs/train.yaml`` records it exactly.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Mapping

__all__ = ["WORKFLOWS", "ALIASES", "workflow_name", "bundle_workflow", "run_bundle", "user_error"]

logger = logging.getLogger(__name__)

#: workflow -> (config file, MONAI run id, config id of what the workflow writes).
WORKFLOWS: dict[str, tuple[str, str, str]] = {
    "training": ("train.yaml", "training", "run_paths"),
    "evaluate": ("evaluate.yaml", "evaluating", "output_dir"),
    "inference": ("inference.yaml", "inference", "output_file"),
}
#: other words accepted for a workflow.
ALIASES = {"train": "training", "evaluating": "evaluate", "eval": "evaluate", "infer": "inference"}


def workflow_name(workflow: str) -> str:
    """``training``, ``evaluate`` or ``inference`` for any accepted word.

    Raises:
        ValueError: an unknown workflow.
    """
    name = ALIASES.get(str(workflow), str(workflow))
    if name not in WORKFLOWS:
        raise ValueError(f"unknown workflow {workflow!r}: use training, evaluate or inference")
    return name


def user_error(exc: BaseException) -> BaseException | None:
    """The user-facing cause of a bundle failure (bad option, missing file...), unwrapping MONAI's errors."""
    from cxrkit.data import DatasetError
    from cxrkit.engine.background import DiskFullError
    from cxrkit.registry import RegistryError
    from cxrkit.weights import WeightError

    wanted = (ValueError, FileNotFoundError, RegistryError, KeyError, TypeError, WeightError, DatasetError,
              DiskFullError)
    seen = set()
    found = None
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, wanted) and not str(current).startswith(("Failed to ", "Component to instantiate")):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _config_and_overrides(name: str, bundle: str | Path,
                          overrides: Mapping[str, Any] | None) -> tuple[Path, list[Path], dict[str, Any]]:
    """``(bundle root, config files in merge order, overrides)``; a resumed training uses the run folder's own
    config. A bundle's evaluate or inference override runs as two files, after its ``train.yaml``
    (:func:`cxrkit.bundle.config_files`); a whole config (training, a run folder's) as one."""
    from cxrkit.bundle import config_files, find_bundle
    from cxrkit.runfolder import resume_target

    config_name = WORKFLOWS[name][0]
    root = find_bundle(bundle)
    configs = config_files(root, config_name.split(".")[0])
    pairs = dict(overrides or {})
    if name == "training" and "resume" in pairs:
        resuming, target = resume_target(pairs["resume"])
        folder = Path(target or pairs.get("output_dir") or "") if resuming else None
        if folder and (folder / "configs" / config_name).is_file() and folder.resolve() != root:
            logger.info("resuming %s with its own configs/%s", folder, config_name)
            root = folder.resolve()
            configs = [root / "configs" / config_name]
    pairs.setdefault("bundle_root", str(root))
    return root, configs, pairs


def _check_metadata_classes(*roots: Any) -> None:
    """Refuse class names in ``configs/metadata.json`` that cannot be stored safely, before MONAI reads the file.

    The configs read the names as data (:func:`cxrkit.runfolder.class_names`), but MONAI's runner loads the
    metadata into its config parser as ``_meta_``, where a name like ``%file#id`` is a macro.

    Raises:
        cxrkit.data.classnames.ClassNameError: a name the run folder should never hold (it was edited by hand or
            written by a cxrkit that did not check names); the message names the file.
    """
    import json

    from cxrkit.data.classnames import check_class_names
    from cxrkit.runfolder import RunPaths, metadata_classes

    for root in {str(r) for r in roots if r is not None}:
        meta = RunPaths.of(root).metadata
        try:
            names = metadata_classes(json.loads(meta.read_text(encoding="utf-8")), meta)
        except (OSError, ValueError):
            continue  # no metadata or no classes: the workflow reports what it needs
        check_class_names(names, f"{meta} (channel_def)")


def _snapshot(configs: list[Path], pairs: Mapping[str, Any]) -> Any:
    """The training config as written (the files merged, overrides applied) for the run recorder
    (``None`` when it has none)."""
    from monai.bundle import ConfigParser

    from cxrkit.engine.record import ConfigSnapshot

    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    if "run_recorder" not in parser.config:
        return None
    try:
        parser.update(pairs=dict(pairs))
    except (KeyError, TypeError, ValueError, IndexError):
        return None  # the workflow itself reports the bad override
    return ConfigSnapshot(parser.get())


def bundle_workflow(workflow: str, bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> Any:
    """MONAI's ``ConfigWorkflow`` for ``workflow`` of ``bundle``, created and initialised (not yet run).

    Args:
        workflow: ``training``, ``evaluate`` or ``inference`` (or ``train``, ``eval``, ``infer``).
        bundle: a bundle folder, a plugin name or a run folder.
        overrides: config ids and values (``{"epochs": 2, "train#trainer#max_epochs": 2}``); ``tracking``
            (``mlflow``) is MONAI's runner argument of that name (:mod:`cxrkit.tracking`).

    Returns:
        The workflow; ``workflow.parser`` resolves any config id, ``run()`` and ``finalize()`` finish it.

    Raises:
        cxrkit.bundle.BundleNotFoundError: not a bundle folder.
        FileNotFoundError: the bundle lacks the workflow's config.
        cxrkit.tracking.TrackingError: ``tracking`` is not ``mlflow``, or MLflow is not installed.
        cxrkit.engine.settings.SettingsError: an override names no config id (with the nearest ids), or a
            setting's value is bad (raised by the config's ``initialize``, wrapped by MONAI).
        Exception: whatever initialising the workflow raises.
    """
    from monai.bundle import ConfigParser
    from monai.bundle.scripts import create_workflow

    from cxrkit.engine.settings import check_overrides

    from cxrkit.tracking import check_tracking

    name = workflow_name(workflow)
    root, configs, pairs = _config_and_overrides(name, bundle, overrides)
    # `tracking` is an argument of MONAI's runner, not a config id: MONAI patches its MLflow handler in
    tracking = check_tracking(pairs.pop("tracking", None))
    if tracking is not None and name != "training":
        raise ValueError(f"--tracking is for training runs (cxrkit external --tracking {tracking} tracks an "
                         "evaluation on another collection)")
    # unknown option names before anything runs (the config's `initialize` then checks every value)
    where = " + ".join(str(c) for c in configs)
    check_overrides(ConfigParser.load_config_files([str(c) for c in configs]), pairs, f"the {name} config {where}")
    _check_metadata_classes(root, pairs.get("bundle_root"))
    if name == "training":
        snapshot = _snapshot(configs, pairs)
        if snapshot is not None:
            pairs["run_recorder#config"] = snapshot
    logging_file = configs[0].parent / "logging.conf"  # MONAI's default: beside the (first) config
    with warnings.catch_warnings():
        # MONAI warns that configs run code; these are cxrkit's own or the user's configs
        warnings.filterwarnings("ignore", message="parsing config_file")
        return create_workflow(
            config_file=[str(c) for c in configs] if len(configs) > 1 else str(configs[0]),
            meta_file=str(root / "configs" / "metadata.json"),
            logging_file=str(logging_file) if logging_file.is_file() else None,
            run_id=WORKFLOWS[name][1],
            tracking=tracking,
            **pairs,
        )


def _drop_empty_run_folder(flow: Any) -> None:
    """A training that failed before writing anything (bad data, a missing weight file) leaves no empty folder."""
    from cxrkit.runfolder import RunPaths

    resolved = getattr(getattr(flow.parser, "ref_resolver", None), "resolved_content", None) or {}
    paths = resolved.get("run_paths")  # only if the run got as far as choosing its folder
    if not isinstance(paths, RunPaths) or paths.resuming:
        return
    try:
        paths.root.rmdir()  # only when empty: anything written stays
        logger.debug("removed the empty run folder %s", paths.root)
    except OSError:
        pass


def run_bundle(workflow: str, bundle: str | Path, overrides: Mapping[str, Any] | None = None) -> Path | None:
    """Run ``workflow`` of ``bundle`` with ``overrides``, as ``python -m monai.bundle run`` would.

    When training is resumed (``resume``: the run folder), the run folder's own
    ``configs/train.yaml`` is used, so the run continues with exactly its
    settings; further overrides still apply.

    Args:
        workflow: ``training``, ``evaluate`` or ``inference``.
        bundle: a bundle folder, a plugin name or a run folder.
        overrides: config ids and values, e.g. ``{"dataset_dir": "data/x", "epochs": 2}``.

    Returns:
        What the workflow wrote: the run folder (training), the evaluation folder (evaluate) or the
        predictions file (inference).

    Raises:
        cxrkit.bundle.BundleNotFoundError: not a bundle folder.
        FileNotFoundError: the bundle lacks the workflow's config.
        Exception: whatever the workflow raises (:func:`user_error` finds the user's mistake in it).
    """
    flow = bundle_workflow(workflow, bundle, overrides)
    try:
        flow.run()
    except BaseException:
        _drop_empty_run_folder(flow)
        raise
    written = flow.parser.get_parsed_content(WORKFLOWS[workflow_name(workflow)][2])
    flow.finalize()
    written = getattr(written, "root", written)
    return Path(str(written)) if written is not None else None
