"""The run folder: its layout, atomic file writing, and the handler that records a run.

A finished run folder ``runs/<plugin>-<YYYYmmdd-HHMMSS>/`` is a servable MONAI
bundle and the unit of record that reports, comparisons, prediction and
serving read (see ``docs/training.md`` for the contract)::

    configs/train.yaml        resolved training config (overrides applied)
    configs/inference.yaml    self-contained inference config (MONAI Label reads it alone)
    configs/evaluate.yaml     evaluation of models/model.pt on a dataset
    configs/metadata.json     bundle metadata; outputs.pred.channel_def = the run's classes
    configs/logging.conf
    models/model.pt           best model's state_dict (by the chosen validation metric)
    models/checkpoint_last.pt model, optimiser, trainer state, RNG... for --resume
    split.json                the split manifest
    weights.json              initial backbone weights: plugin, architecture, path, sha256, pretrained
    metrics.json/.csv         one row per epoch; best metric and epoch
    predictions.csv           validation predictions of the best model
    versions.json             library versions and device
    summary.json              counts per class and split, skipped images, leakage audit, wall time
    tensorboard/              event files

Every JSON/CSV/YAML file is written to a temporary file and moved into place
(``os.replace``), so a crash never leaves a half-written record.
"""

from __future__ import annotations

import copy
import csv
import inspect
import io
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ignite.engine import Engine, Events

__all__ = [
    "RunPaths",
    "RunDirError",
    "RunRecorder",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "library_versions",
    "active_config",
    "WEIGHTS_KEYS",
    "resume_target",
    "relative_paths",
]

logger = logging.getLogger(__name__)

#: keys of ``weights.json`` (the run-folder contract).
WEIGHTS_KEYS = ("plugin", "architecture", "path", "sha256", "pretrained")
_NULLS = {"", "none", "null", "false", "no", "0"}
_TRUES = {"true", "yes", "1", "on"}


class RunDirError(ValueError):
    """The output / resume folder cannot be used; the message says why and what to do."""


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return str(value)


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented JSON atomically (NaN is written as ``NaN``, as Python reads it)."""
    return atomic_write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def atomic_write_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write dict rows as CSV atomically; nested values (lists) are written as JSON."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def resume_target(resume: Any) -> tuple[bool, str | None]:
    """``(resuming, explicit folder)`` from a ``--resume`` value: bool, "true"/"false" or a path."""
    if resume is None or isinstance(resume, bool):
        return bool(resume), None
    if isinstance(resume, (int, float)):
        return bool(resume), None
    text = str(resume).strip()
    if text.lower() in _NULLS:
        return False, None
    if text.lower() in _TRUES:
        return True, None
    return True, text


@dataclass(frozen=True)
class RunPaths:
    """Where a run's files go.

    Attributes:
        root: the run folder (absolute).
        resuming: whether this run continues an earlier one in ``root``.
    """

    root: Path
    resuming: bool = False

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
        out = None if output_dir is None or str(output_dir).strip().lower() in _NULLS else str(output_dir)
        if resuming:
            if target and out and Path(target).resolve() != Path(out).resolve():
                raise RunDirError(f"--resume {target} and --output_dir {out} name different folders; give one")
            folder = target or out
            if not folder:
                raise RunDirError("--resume needs the run folder: --resume RUN_DIR (or --resume true --output_dir RUN_DIR)")
            paths = cls(Path(folder).expanduser().resolve(), True)
            if not paths.last_checkpoint.is_file():
                raise RunDirError(
                    f"nothing to resume in {paths.root}: {paths.last_checkpoint} does not exist (no epoch finished "
                    "there, or it is not a run folder); start the run again without --resume"
                )
            return paths
        if out is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            out = os.path.join("runs", f"{plugin}-{stamp}")
        paths = cls(Path(out).expanduser().resolve(), False)
        taken = [p.name for p in (paths.last_checkpoint, paths.metrics_json, paths.model) if p.exists()]
        if taken:
            raise RunDirError(
                f"{paths.root} already holds a run ({', '.join(taken)}); continue it with --resume {paths.root}, "
                "or choose another --output_dir"
            )
        paths.root.mkdir(parents=True, exist_ok=True)
        return paths

    # files of the contract
    configs = property(lambda self: self.root / "configs")
    models = property(lambda self: self.root / "models")
    model = property(lambda self: self.root / "models" / "model.pt")
    last_checkpoint = property(lambda self: self.root / "models" / "checkpoint_last.pt")
    split = property(lambda self: self.root / "split.json")
    weights = property(lambda self: self.root / "weights.json")
    metrics_json = property(lambda self: self.root / "metrics.json")
    metrics_csv = property(lambda self: self.root / "metrics.csv")
    predictions = property(lambda self: self.root / "predictions.csv")
    versions = property(lambda self: self.root / "versions.json")
    summary = property(lambda self: self.root / "summary.json")
    tensorboard = property(lambda self: self.root / "tensorboard")

    def __str__(self) -> str:
        return str(self.root)


def library_versions(device: Any = None) -> dict[str, str]:
    """Versions of python, torch, torchvision, monai, ignite, numpy and cxrkit, and the device."""
    import ignite
    import monai
    import numpy
    import torch
    import torchvision

    import cxrkit

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "monai": monai.__version__,
        "ignite": ignite.__version__,
        "numpy": numpy.__version__,
        "cxrkit": cxrkit.__version__,
        "device": str(device) if device is not None else "cpu",
    }
    if device is not None and str(device).startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def active_config() -> dict[str, Any] | None:
    """The raw config (overrides applied) of the MONAI ``ConfigParser`` evaluating the caller, if any.

    MONAI offers a config expression no handle on its parser, so this looks for
    the parser on the call stack (``ConfigParser.get_parsed_content`` is always
    there while a bundle workflow runs). Returns a deep copy without ``_meta_``,
    or ``None`` when not called from a bundle config.
    """
    from monai.bundle import ConfigParser

    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            try:
                parser = candidate if isinstance(candidate, ConfigParser) else getattr(candidate, "parser", None)
            except Exception:  # noqa: BLE001 - an unrelated object's property failed
                parser = None
            if isinstance(parser, ConfigParser):
                config = copy.deepcopy(parser.get())
                if isinstance(config, dict):
                    config.pop("_meta_", None)
                    return config
            frame = frame.f_back
    finally:
        del frame
    return None


class RunRecorder:
    """Ignite handler (trainer): writes the run folder's descriptive records.

    At start: ``configs/`` (resolved ``train.yaml``, generated ``inference.yaml``,
    ``evaluate.yaml`` and ``metadata.json`` for the run's classes, ``logging.conf``), ``split.json``,
    ``weights.json``, ``versions.json`` and a first ``summary.json``. At the end
    (or on an exception, which it re-raises) the final ``summary.json`` with the
    status and wall time. Attach it FIRST so it sees exceptions before
    ``StatsHandler`` re-raises them.

    Args:
        run_paths: the run folder.
        data: the prepared data (:class:`cxrkit.engine.prepare.PreparedData`).
        network: the :class:`~cxrkit.networks.classifier.CXRClassifier` being trained.
        image_size: network input size in pixels.
        recorder: the :class:`~cxrkit.engine.handlers.MetricsRecorder` (best epoch for the summary).
        settings: the run's resolved top-level settings, written into ``configs/train.yaml``.
        device: the training device.
    """

    def __init__(
        self,
        run_paths: RunPaths,
        data: Any,
        network: Any,
        image_size: int,
        recorder: Any = None,
        settings: Mapping[str, Any] | None = None,
        device: Any = None,
    ) -> None:
        if not isinstance(run_paths, RunPaths):
            raise TypeError(f"run_paths must be a RunPaths, got {type(run_paths).__name__}")
        self.paths = run_paths
        self.data = data
        self.network = network
        self.image_size = int(image_size)
        self.recorder = recorder
        self.settings = dict(settings or {})
        self.device = device
        self._started = 0.0
        self._previous_wall = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.COMPLETED, self.completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.failed)

    # -- files ---------------------------------------------------------------------
    def _summary(self, status: str, **extra: Any) -> dict[str, Any]:
        data = self.data
        summary: dict[str, Any] = {
            "status": status,
            "dataset": data.dataset,
            "task": data.task,
            "classes": list(data.classes),
            "counts": data.counts(),
            "skipped": {"count": len(data.skipped), "images": list(data.skipped)},
            "excluded": data.excluded_count,
            "leakage": data.leakage_summary(),
            "wall_time_s": round(self._previous_wall + (time.time() - self._started if self._started else 0.0), 3),
        }
        if self.recorder is not None:
            summary.update(best_metric=self.recorder.best_metric, best_epoch=self.recorder.best_epoch,
                           best_value=self.recorder.best_value, epochs_completed=len(self.recorder.rows))
        summary.update(extra)
        return summary

    def write_configs(self) -> None:
        """Write ``configs/`` so the run folder is a servable bundle for its classes."""
        from cxrkit.bundle.generate import BundleParams, render_logging_conf, render_metadata, render_config
        import yaml

        params = BundleParams(
            plugin=self.network.weights_info["plugin"],
            image_size=self.image_size,
            head=self.network.head_name,
            classes=tuple(self.data.classes),
            in_channels=self.network.in_channels,
            bundle_root=str(self.paths.root),
        )
        config = active_config()
        if config is None:
            config = {}
        config.update(self.settings)
        atomic_write_text(self.paths.configs / "train.yaml",
                          "# Resolved training config of this run (overrides applied), written by cxrkit.\n"
                          + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=110))
        atomic_write_text(self.paths.configs / "inference.yaml", render_config("inference", params))
        atomic_write_text(self.paths.configs / "evaluate.yaml", render_config("evaluate", params))
        atomic_write_json(self.paths.configs / "metadata.json", render_metadata(params, runtime=True))
        atomic_write_text(self.paths.configs / "logging.conf", render_logging_conf())

    def started(self, engine: Engine) -> None:
        self._started = time.time()
        if self.paths.resuming and self.paths.summary.is_file():
            try:
                self._previous_wall = float(json.loads(self.paths.summary.read_text()).get("wall_time_s") or 0.0)
            except (ValueError, OSError):
                self._previous_wall = 0.0
        self.paths.models.mkdir(parents=True, exist_ok=True)
        if not self.paths.resuming or not (self.paths.configs / "train.yaml").is_file():
            self.write_configs()
        if not self.paths.split.is_file():
            self.data.split.save(self.paths.split)
        info = dict(self.network.weights_info)
        weights = {k: info.get(k) for k in WEIGHTS_KEYS}
        weights.update({k: v for k, v in info.items() if k not in weights})
        if not (self.paths.resuming and self.paths.weights.is_file()):
            atomic_write_json(self.paths.weights, weights)
        atomic_write_json(self.paths.versions, library_versions(self.device))
        atomic_write_json(self.paths.summary, self._summary("running"))
        logger.info("run folder: %s", self.paths.root)

    def completed(self, engine: Engine) -> None:
        stopped_early = engine.state.epoch < (engine.state.max_epochs or 0)
        atomic_write_json(self.paths.summary, self._summary("finished", stopped_early=stopped_early))
        logger.info("finished: %s (best %s=%s at epoch %s)", self.paths.root,
                    getattr(self.recorder, "best_metric", "?"), getattr(self.recorder, "best_value", "?"),
                    getattr(self.recorder, "best_epoch", "?"))

    def failed(self, engine: Engine, error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        try:
            atomic_write_json(self.paths.summary, self._summary(
                status, error=f"{type(error).__name__}: {error}",
                resume_with=f"--resume {self.paths.root}" if self.paths.last_checkpoint.is_file() else None))
        finally:
            raise error


def relative_paths(paths: Iterable[str], root: str | os.PathLike[str] | None) -> list[str]:
    """``paths`` relative to ``root`` (posix separators); unchanged when outside it or no root."""
    out = []
    base = Path(root).resolve() if root else None
    for p in paths:
        path = Path(p)
        if base is not None:
            try:
                out.append(path.resolve().relative_to(base).as_posix())
                continue
            except ValueError:
                pass
        out.append(str(p))
    return out
