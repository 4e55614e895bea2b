"""The run folder: one layout, written by a training run and read by everything else.

A finished run folder ``runs/<plugin>-<YYYYmmdd-HHMMSS>/`` is a servable MONAI
bundle and the unit of record that reports, comparisons, prediction, export
and serving read (see ``docs/training.md`` for the contract)::

    configs/train.yaml        resolved training config (overrides applied)
    configs/inference.yaml    self-contained inference config (MONAI Label reads it alone)
    configs/evaluate.yaml     evaluation of models/model.pt on a dataset
    configs/metadata.json     bundle metadata; outputs.pred.channel_def = the run's classes
    configs/logging.conf
    models/model.pt           best model's state_dict (by the chosen validation metric)
    models/checkpoint_last.pt model, optimiser, trainer state, RNG... for --resume
    models/model.ts           TorchScript export (``cxrkit export``)
    split.json                the split manifest
    weights.json              initial backbone weights: plugin, architecture, path, sha256, pretrained
    metrics.json/.csv         one row per epoch; best metric and epoch
    predictions.csv           validation predictions of the best model
    test/predictions.csv      held-out test predictions of the best model (no test part: absent)
    test/metrics.json         its metrics
    calibration.json          temperature fitted on the validation predictions (--calibrate true, `cxrkit calibrate`)
    audit/                    shortcut audit: audit.json and figures (`cxrkit audit`, `cxrkit report`)
    external/<name>/          evaluations on other collections (`cxrkit external`): predictions.csv, metrics.json
    versions.json             library versions and device
    summary.json              counts per class and split, skipped images, leakage audit, wall time
    log.txt                   the whole log of the training (the console shows one line per epoch)
    tensorboard/              event files
    evaluation/               metrics.json, predictions.csv of ``cxrkit run evaluate``
    inference/predictions.csv ``cxrkit run inference``
    report/                   report.md, report.html of ``cxrkit report``

:class:`RunPaths` names every one of these files; no other module spells a
run-folder path. :meth:`RunPaths.create` chooses and checks a new folder (the
training side); :meth:`RunPaths.of` opens an existing one (the readers).

The records a command acts on are read through :meth:`RunPaths.read_records`
(``split.json`` by :func:`cxrkit.data.manifest.read_manifest`, ``calibration.json``
by :func:`cxrkit.calibration.read_calibration`), so every reader -- the report
(:func:`cxrkit.report.runfolder.load_run`: ``report``, ``calibrate``, ``external``),
the model loader (:func:`cxrkit.serve.model.load_model`: ``predict``, ``audit``,
``export``) and ``cxrkit external`` before it evaluates -- checks them the same
way and fails with a one-line :class:`RunFolderError` naming the file and field.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Mapping

from cxrkit import options
from cxrkit.calibration import Calibration, CalibrationError, read_calibration
from cxrkit.data.manifest import ManifestError, SplitManifest, read_manifest

__all__ = ["RunPaths", "RunDirError", "RunFolderError", "RunRecords", "MetadataError", "resume_target", "model_file",
           "class_names", "metadata_classes", "WEIGHTS_KEYS", "INFERENCE_CONFIGS"]

#: keys of ``weights.json`` (the run-folder contract).
WEIGHTS_KEYS = ("plugin", "architecture", "path", "sha256", "pretrained")
#: inference config file names looked for in ``configs/``, in order (as MONAI Label does).
INFERENCE_CONFIGS = ("inference.yaml", "inference.json")


class RunDirError(ValueError):
    """The output / resume folder cannot be used; the message says why and what to do."""


class RunFolderError(ValueError):
    """A run folder file is missing or malformed; the message names the file and the fix."""


class MetadataError(ValueError):
    """A bundle's ``configs/metadata.json`` does not name the classes; the message says how to fix it."""


def resume_target(resume: Any) -> tuple[bool, str | None]:
    """``(resuming, explicit folder)`` from a ``--resume`` value: a boolean spelling or a run folder."""
    return options.flag_or_path(resume, "resume")


def _child(*parts: str) -> property:
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files are.

    Attributes:
        root: the run folder (absolute).
        resuming: whether this run continues an earlier one in ``root``.
    """

    root: Path
    resuming: bool = False

    @classmethod
    def of(cls, folder: str | os.PathLike[str]) -> "RunPaths":
        """An existing run (or bundle) folder, to read."""
        return cls(Path(folder).expanduser().resolve())

    @classmethod
    def create(cls, output_dir: Any = None, plugin: str = "run", resume: Any = False) -> "RunPaths":
        """Choose and create the run folder.

        Args:
            output_dir: the folder; default ``runs/<plugin>-<YYYYmmdd-HHMMSS>`` under the
                working directory.
            plugin: weight plugin name, for the default folder name.
            resume: ``False``; ``True`` to continue the run in ``output_dir``; or the run
                folder to continue.

        Raises:
            RunDirError: a new run would overwrite an earlier run's records, or the run to
                resume has no checkpoint.
        """
        resuming, target = resume_target(resume)
        out = options.text(output_dir)
        if resuming:
            if target and out and Path(target).resolve() != Path(out).resolve():
                raise RunDirError(f"--resume {target} and --output_dir {out} name different folders; give one")
            folder = target or out
            if not folder:
                raise RunDirError("--resume needs the run folder: --resume RUN_DIR (or --resume true --output_dir RUN_DIR)")
            paths = cls.of(folder)
            paths = cls(paths.root, True)
            if not paths.last_checkpoint.is_file():
                raise RunDirError(
                    f"nothing to resume in {paths.root}: {paths.last_checkpoint} does not exist (no epoch finished "
                    "there, or it is not a run folder); start the run again without --resume"
                )
            return paths
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", f"{plugin}-{stamp}")
        paths = cls.of(out)
        taken = [p.name for p in (paths.last_checkpoint, paths.metrics_json, paths.model) if p.exists()]
        if taken:
            raise RunDirError(
                f"{paths.root} already holds a run ({', '.join(taken)}); continue it with --resume {paths.root}, "
                "or choose another --output_dir"
            )
        paths.root.mkdir(parents=True, exist_ok=True)
        return paths

    # files of the contract
    configs = _child("configs")
    train_config = _child("configs", "train.yaml")
    evaluate_config = _child("configs", "evaluate.yaml")
    metadata = _child("configs", "metadata.json")
    logging_conf = _child("configs", "logging.conf")
    models = _child("models")
    model = _child("models", "model.pt")
    model_ts = _child("models", "model.ts")
    last_checkpoint = _child("models", "checkpoint_last.pt")
    split = _child("split.json")
    weights = _child("weights.json")
    metrics_json = _child("metrics.json")
    metrics_csv = _child("metrics.csv")
    predictions = _child("predictions.csv")
    test = _child("test")
    test_predictions = _child("test", "predictions.csv")
    test_metrics = _child("test", "metrics.json")
    calibration = _child("calibration.json")
    audit = _child("audit")
    audit_json = _child("audit", "audit.json")
    external = _child("external")
    versions = _child("versions.json")
    summary = _child("summary.json")
    log = _child("log.txt")
    tensorboard = _child("tensorboard")
    debug = _child("debug")
    evaluation = _child("evaluation")
    evaluation_metrics = _child("evaluation", "metrics.json")
    evaluation_predictions = _child("evaluation", "predictions.csv")
    inference_predictions = _child("inference", "predictions.csv")
    report = _child("report")
    report_md = _child("report", "report.md")
    report_html = _child("report", "report.html")

    @property
    def inference_config(self) -> Path:
        """``configs/inference.yaml``, or ``configs/inference.json`` when only that exists."""
        for name in INFERENCE_CONFIGS:
            if (self.configs / name).is_file():
                return self.configs / name
        return self.configs / INFERENCE_CONFIGS[0]

    @property
    def trained_model(self) -> Path | None:
        """``models/model.pt``, else ``models/model.ts``, when present."""
        return next((p for p in (self.model, self.model_ts) if p.is_file()), None)

    def missing(self, *files: Path) -> list[Path]:
        """The ``files`` that do not exist."""
        return [f for f in files if not f.is_file()]

    def is_servable(self) -> bool:
        """Whether the folder holds an inference config, metadata and a trained model (what serving needs)."""
        return not self.missing(self.inference_config, self.metadata) and self.trained_model is not None

    def read_split(self, classes: list[str] | None, dataset_dir: Any = None, *,
                   same_names: bool = False) -> SplitManifest | None:
        """``split.json``, checked (:func:`cxrkit.data.manifest.read_manifest`); ``None`` when absent.

        Args:
            classes: the run's classes (its labels must index them); ``None``: the manifest's own.
            dataset_dir: where the run's dataset is now (``--dataset_dir``): the entries resolve under it
                instead of the recorded root, and must stay inside it as well.
            same_names: the manifest must name the same classes (not only as many), for readers that use
                what the labels mean.

        Raises:
            RunFolderError: the file is not valid JSON, not a split manifest, has labels outside the classes or
                an entry outside the dataset folder (one line: file, field, problem).
        """
        if not self.split.is_file():
            return None
        try:
            return read_manifest(self.split, classes, dataset_dir, same_names=same_names)
        except ManifestError as exc:
            raise RunFolderError(str(exc)) from None

    def read_calibration(self) -> Calibration | None:
        """``calibration.json``, checked (a finite positive temperature...); ``None`` when absent.

        Raises:
            RunFolderError: the file exists but is not a valid calibration (one line: file, field, problem).
        """
        try:
            return read_calibration(self.calibration)
        except CalibrationError as exc:
            raise RunFolderError(str(exc)) from None

    def read_records(self, classes: list[str] | None, dataset_dir: Any = None, *,
                     calibration: bool = True) -> "RunRecords":
        """The records every command that opens this run checks first: ``split.json`` and ``calibration.json``.

        Args:
            classes: the run's classes (from ``metrics.json`` or ``configs/metadata.json``).
            dataset_dir: where the run's dataset is now, when the user relocated it (``--dataset_dir``).
            calibration: read ``calibration.json``; ``False`` for ``cxrkit calibrate``, which replaces it.

        Raises:
            RunFolderError: either file exists but is not valid (one line: file, field, problem).
        """
        return RunRecords(self.read_split(classes, dataset_dir), self.read_calibration() if calibration else None)

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class RunRecords:
    """A run folder's checked records (see :meth:`RunPaths.read_records`).

    Attributes:
        split: ``split.json`` (``None``: absent).
        calibration: ``calibration.json`` (``None``: absent, the probabilities are as trained).
    """

    split: SplitManifest | None
    calibration: Calibration | None


def model_file(bundle_root: Any) -> str:
    """``<bundle_root>/models/model.pt``, checked to exist (the evaluate/inference configs' ``model_path``).

    Raises:
        FileNotFoundError: no trained model there; the message says how to get one.
    """
    path = RunPaths.of(str(bundle_root)).model
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: this bundle holds no trained model. Train one "
            f"(cxrkit run training {bundle_root} --dataset_dir DIR) and evaluate or run inference on the run "
            "folder it writes (runs/<plugin>-<timestamp>), or pass --bundle_root RUN_DIR"
        )
    return str(path)


def metadata_classes(metadata: Mapping[str, Any], source: str | os.PathLike[str] = "metadata.json") -> list[str]:
    """The class names, by output index, from bundle metadata.

    Args:
        metadata: the parsed ``metadata.json``.
        source: where the metadata came from (for error messages).

    Returns:
        ``channel_def`` of the first output as a list (index ``i`` -> name).

    Raises:
        MetadataError: no ``channel_def``, or its keys are not the indices ``0 .. n-1``.
    """
    try:
        outputs = metadata["network_data_format"]["outputs"]
        channel_def = next(iter(outputs.values()))["channel_def"]
    except (KeyError, TypeError, StopIteration):
        raise MetadataError(
            f"{source}: no network_data_format.outputs.<output>.channel_def naming the classes; a run folder "
            "written by `cxrkit run training` has it. Re-run training or add "
            '"channel_def": {"0": "<class 0>", "1": "<class 1>"} to the output'
        ) from None
    try:
        indexed = {int(k): str(v) for k, v in channel_def.items()}
    except (AttributeError, ValueError):
        raise MetadataError(f"{source}: channel_def must map output indices to class names, got {channel_def!r}")
    if sorted(indexed) != list(range(len(indexed))) or len(indexed) < 2:
        raise MetadataError(
            f"{source}: channel_def keys must be the output indices 0..n-1 (n >= 2), got {sorted(indexed)}"
        )
    return [indexed[i] for i in range(len(indexed))]


def class_names(bundle_root: Any) -> list[str]:
    """The classes of ``<bundle_root>/configs/metadata.json``: the evaluate and inference configs' ``classes``.

    The configs call this (``classes: "$workflow.class_names(@bundle_root)"``) instead of holding the
    names, so a class name is always data: the config parser never sees it, whatever its characters.

    Raises:
        MetadataError: no readable ``metadata.json`` there, or it does not name the classes.
    """
    path = RunPaths.of(str(bundle_root)).metadata
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MetadataError(
            f"{path} does not exist: the class names of a bundle are in its configs/metadata.json. Pass the run "
            "folder (cxrkit run evaluate|inference RUN_DIR, or --bundle_root RUN_DIR)"
        ) from None
    except (OSError, ValueError) as exc:
        raise MetadataError(f"{path}: not readable JSON: {exc}") from None
    return metadata_classes(metadata, path)
