"""The handler that records a training run in its run folder (layout: :mod:`cxrkit.runfolder`).

:class:`RunRecorder` writes the descriptive records of a run: its configs (so
the folder is a servable bundle and can be resumed), the split, the initial
weights, the library versions and ``summary.json``. The resolved training
config it writes is handed to it explicitly: :func:`cxrkit.bundle.runner.run_bundle`
passes the config it runs (its files merged, every override applied) as a :class:`ConfigSnapshot`;
under MONAI's own runner the bundle's ``configs/train.yaml`` is read (the package's base when absent)
and the run's resolved top-level settings (which the config lists) are applied to it. Either way
the run folder gets ONE self-contained ``configs/train.yaml``: what a resume runs.
"""

from __future__ import annotations

import copy
import json
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ignite.engine import Engine, Events

from cxrkit.atomic import atomic_write_json, atomic_write_text
from cxrkit.runfolder import WEIGHTS_KEYS, RunPaths
from cxrkit.versions import library_versions

__all__ = ["RunRecorder", "ConfigSnapshot", "Terminated", "TerminationSignal"]

logger = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process was asked to stop with SIGTERM (``timeout``, Slurm, Kubernetes, ``docker stop``).

    A :class:`KeyboardInterrupt`, so a training run records it as Ctrl-C: status ``interrupted`` with
    ``resume_with``.

    Attributes:
        signum: the signal number (the command line exits with ``128 + signum``).
    """

    signum = int(getattr(signal, "SIGTERM", 15))


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"received {signal.Signals(signum).name} (e.g. from timeout, Slurm, Kubernetes or docker stop)")


class TerminationSignal:
    """SIGTERM raised as :class:`Terminated` while installed; the previous handler is restored afterwards.

    Signal handlers belong to the main thread: :meth:`install` does nothing in any other thread.
    """

    def __init__(self) -> None:
        self._previous: Any = None
        self.installed = False

    def install(self) -> None:
        """Raise :class:`Terminated` on SIGTERM (main thread only; idempotent)."""
        if self.installed or threading.current_thread() is not threading.main_thread():
            return
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, _raise_terminated)
        self.installed = True

    def restore(self) -> None:
        """Put the previous SIGTERM handler back."""
        if not self.installed:
            return
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
        self.installed = False


class ConfigSnapshot:
    """A bundle config as written (``$``-expressions and ``@``-references unparsed), overrides applied.

    MONAI's config parser evaluates every string of a config; wrapped in this
    object the raw config passes through a config value untouched (the runner
    sets it as ``run_recorder#config``).

    Args:
        config: the raw config; ``_meta_`` is left out.
    """

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = {k: copy.deepcopy(v) for k, v in config.items() if k != "_meta_"}

    def __repr__(self) -> str:
        return f"ConfigSnapshot({len(self.config)} top-level ids)"


def _raw_config(config: Any) -> dict[str, Any]:
    """The raw training config from a :class:`ConfigSnapshot`, a mapping, or the config file(s) a run started from.

    Files are merged as MONAI merges a list of config files. When no whole config can be read (under
    ``python -m monai.bundle`` the recorder reads ``<bundle_root>/configs/train.yaml``, and ``bundle_root``
    ``"."`` is the working directory, not necessarily the bundle's folder), the package's base training
    config stands in under what was read, so the run folder's ``configs/train.yaml`` is always one
    self-contained config (the run's resolved settings, the plugin included, are then written over it).
    """
    if isinstance(config, ConfigSnapshot):
        return copy.deepcopy(config.config)
    if isinstance(config, Mapping):
        return {k: copy.deepcopy(v) for k, v in config.items() if k != "_meta_"}
    from monai.bundle import ConfigParser

    from cxrkit.bundle.render import base_config, load_yaml

    named = [config] if isinstance(config, (str, Path)) else list(config or [])
    files = [Path(str(f)) for f in named if Path(str(f)).is_file()]
    loaded = ConfigParser.load_config_files([str(f) for f in files]) if files else {}
    raw = {k: v for k, v in loaded.items() if k != "_meta_"} if isinstance(loaded, dict) else {}
    if "run" not in raw:
        logger.info("recording the run's config on cxrkit's base training config (read: %s)",
                    ", ".join(map(str, files)) or "nothing")
        whole = load_yaml(base_config("train"))
        whole.update(raw)
        raw = whole
    return raw


class RunRecorder:
    """Ignite handler (trainer): writes the run folder's descriptive records.

    At start: ``configs/`` (resolved ``train.yaml``, generated ``inference.yaml``,
    ``evaluate.yaml`` and ``metadata.json`` for the run's classes, ``logging.conf``), ``split.json``,
    ``weights.json``, ``versions.json`` and a first ``summary.json``. At the end
    (or on an exception, which it re-raises) the final ``summary.json`` with the
    status and wall time. Attach it FIRST so it sees exceptions before
    ``StatsHandler`` re-raises them. While the run lasts, SIGTERM is an
    interruption like Ctrl-C (:class:`TerminationSignal`): ``summary.json`` then says
    ``interrupted`` with ``resume_with``.

    Args:
        run_paths: the run folder.
        data: the prepared data (:class:`cxrkit.engine.prepare.PreparedData`).
        network: the :class:`~cxrkit.networks.classifier.CXRClassifier` being trained.
        image_size: network input size in pixels.
        recorder: the :class:`~cxrkit.engine.handlers.MetricsRecorder` (best epoch for the summary).
        settings: the run's resolved top-level settings, written into ``configs/train.yaml`` over ``config``
            (``bundle_root`` and ``output_dir`` become the run folder, ``dataset_dir`` the data's root, ``resume``
            false).
        device: the training device.
        config: the raw training config (a :class:`ConfigSnapshot` from the runner, a mapping, or the
            config file the run was started from).
        details: further entries for ``summary.json`` (e.g. ``{"linear_probe": {...}}``).
        writer: the checkpoints' :class:`~cxrkit.engine.background.BackgroundWriter`: when the run fails, its
            pending writes finish first, so the last checkpoint is whole before the failure is recorded.
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
        config: Any = None,
        details: Mapping[str, Any] | None = None,
        writer: Any = None,
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
        self.config = config
        self.details = dict(details or {})
        self.writer = writer
        self._started = 0.0
        self._previous_wall = 0.0
        self._termination = TerminationSignal()

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
        summary.update(self.details)
        summary.update(extra)
        return summary

    def write_configs(self) -> None:
        """Write ``configs/`` so the run folder is a servable bundle for its classes."""
        import yaml

        from cxrkit.bundle.render import BundleParams, render_config, render_logging_conf, render_metadata

        params = BundleParams(
            plugin=self.network.weights_info["plugin"],
            image_size=self.image_size,
            head=self.network.head_name,
            classes=tuple(self.data.classes),
            in_channels=self.network.in_channels,
            bundle_root=str(self.paths.root),
        )
        config = _raw_config(self.config)
        config.update(self.settings)
        # where this run is and what it read: resuming it needs no option
        config.update(bundle_root=str(self.paths.root), output_dir=str(self.paths.root),
                      dataset_dir=getattr(self.data, "root", config.get("dataset_dir")), resume=False)
        atomic_write_text(self.paths.configs / "train.yaml",
                          "# Resolved training config of this run (overrides applied), written by cxrkit.\n"
                          + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=110))
        atomic_write_text(self.paths.configs / "inference.yaml", render_config("inference", params))
        atomic_write_text(self.paths.configs / "evaluate.yaml", render_config("evaluate", params))
        atomic_write_json(self.paths.configs / "metadata.json", render_metadata(params, library_versions()))
        atomic_write_text(self.paths.configs / "logging.conf", render_logging_conf())

    def started(self, engine: Engine) -> None:
        self._termination.install()
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
        self._termination.restore()
        stopped_early = engine.state.epoch < (engine.state.max_epochs or 0)
        atomic_write_json(self.paths.summary, self._summary("finished", stopped_early=stopped_early))
        logger.info("finished: %s (best %s=%s at epoch %s)", self.paths.root,
                    getattr(self.recorder, "best_metric", "?"), getattr(self.recorder, "best_value", "?"),
                    getattr(self.recorder, "best_epoch", "?"))

    def failed(self, engine: Engine, error: BaseException) -> None:
        self._termination.restore()
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        if self.writer is not None:
            self.writer.drain()  # the last checkpoint is whole before the run is declared failed
        try:
            atomic_write_json(self.paths.summary, self._summary(
                status, error=f"{type(error).__name__}: {error}",
                resume_with=f"--resume {self.paths.root}" if self.paths.last_checkpoint.is_file() else None))
        finally:
            raise error
