"""What a training or evaluation run shows on the console: one line per epoch and a closing summary.

MONAI handler style (a bundle config attaches them): arguments are checked in
``__init__``, events are hooked in ``attach``, the work happens in ``__call__``.

* :class:`TrainingConsole` (trainer, attached after the
  :class:`~cxrkit.engine.handlers.MetricsRecorder`): opens the run folder's
  ``log.txt`` (:mod:`cxrkit.console`), prints one line per epoch from the
  recorder's row (the numbers ``metrics.json`` holds) and, called after the
  held-out test evaluation, the summary of :func:`run_summary`.
* :class:`RunLog` (any engine): the log file of an evaluation.

:func:`run_summary` and :func:`source_line` read a finished run folder; ``cxrkit
demo`` and ``cxrkit compare`` print them too, so every command says the same
thing the same way.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Sequence

from ignite.engine import Engine, Events

from cxrkit import console, options
from cxrkit.engine.handlers import MetricsRecorder
from cxrkit.runfolder import RunPaths

__all__ = ["TrainingConsole", "RunLog", "epoch_line", "run_summary", "source_line", "test_metrics"]

logger = logging.getLogger(__name__)


def _num(value: Any, digits: int = 3) -> str:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def epoch_line(row: dict[str, Any], max_epochs: int | None, best_metric: str, best_value: Any,
               best_epoch: Any) -> str:
    """One console line of an epoch: train loss, validation accuracy and AUC, best so far, seconds.

    Args:
        row: the epoch's row of ``metrics.json`` (``epoch``, ``train_loss``, ``val_accuracy``, ``val_auc``,
            ``time_s``).
        max_epochs: the run's epochs (shown as ``3/10``).
        best_metric: the metric choosing the best model.
        best_value: its best value so far (``None`` before any validation).
        best_epoch: the epoch of that value.
    """
    width = len(str(max_epochs)) if max_epochs else 1
    epoch = f"{row['epoch']:>{width}}" + (f"/{max_epochs}" if max_epochs else "")
    parts = [f"epoch {epoch}", f"train loss {_num(row.get('train_loss'), 4)}"]
    if "val_accuracy" in row or "val_auc" in row:
        parts.append(f"val accuracy {_num(row.get('val_accuracy'))} AUC {_num(row.get('val_auc'))}")
    else:
        parts.append("(not validated)")
    if best_epoch is not None:
        parts.append(f"best {best_metric} {_num(best_value)} (epoch {best_epoch})")
    parts.append(f"{float(row.get('time_s', 0.0)):.1f} s")
    return "  ".join(parts)


def test_metrics(run_dir: str | Path, bootstrap: int = 1000, seed: int = 0) -> dict[str, Any] | None:
    """The run's held-out test part: ``{"n", "split", "accuracy", "auc"}`` with bootstrap intervals.

    The numbers are the report's (:func:`cxrkit.report.report.evaluate_run` on ``test/predictions.csv``); each
    metric is ``(value, low, high, confidence)``, the interval ``nan`` when the bootstrap is off or undefined.

    Returns:
        ``None`` when the run has no test predictions or they cannot be read (the log says why).
    """
    from cxrkit.report.report import evaluate_run  # slow at start-up (figures, scikit-learn): only when asked
    from cxrkit.report.runfolder import RunFolderError, load_run

    try:
        run = load_run(run_dir)
        if "test" not in run.splits:
            return None
        ev = evaluate_run(run, bootstrap=bootstrap, seed=seed, split="test")
    except (RunFolderError, OSError, ValueError) as exc:
        logger.warning("no test-part summary for %s: %s", run_dir, exc)
        return None
    found: dict[str, Any] = {"n": int(ev.metrics.n), "split": ev.split}
    for key in ("accuracy", "auc"):
        ci = (ev.intervals or {}).get(key)
        found[key] = (float(ev.point.get(key, math.nan)), float(ci.low) if ci else math.nan,
                      float(ci.high) if ci else math.nan, float(ci.confidence) if ci else math.nan)
    return found


def _with_ci(value: Sequence[float]) -> str:
    point, low, high, confidence = value
    if math.isnan(low) or math.isnan(high):
        return _num(point)
    return f"{_num(point)} ({confidence:.0%} CI {_num(low)}-{_num(high)})"


def _history(paths: RunPaths) -> dict[str, Any]:
    try:
        return json.loads(paths.metrics_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def run_summary(run_dir: str | Path, *, bootstrap: int = 1000, seed: int = 0, report: str | Path | None = None,
                next_command: str | None = None) -> list[str]:
    """The closing lines of a training run: best epoch, test-part metrics with intervals, where things are, what next.

    Args:
        run_dir: the run folder.
        bootstrap: resamples of the test-part intervals (0: none).
        seed: bootstrap seed.
        report: the report written for the run (``None``: the line says how to write it).
        next_command: the command to run next (default: the report, or inference once a report exists).
    """
    paths = RunPaths.of(run_dir)
    history = _history(paths)
    rows = history.get("epochs") or []
    best = next((r for r in rows if r.get("epoch") == history.get("best_epoch")), None)
    lines = []
    if best is not None:
        chosen = history.get("best_metric")
        text = (f"best epoch     : {best['epoch']} of {len(rows)}: validation accuracy {_num(best.get('val_accuracy'))}, "
                f"AUC {_num(best.get('val_auc'))}")
        if chosen not in ("val_accuracy", "val_auc"):
            text += f", {chosen} {_num(history.get('best_value'))}"
        lines.append(text + f" (chosen on {chosen})")
    else:
        lines.append(f"best epoch     : none ({len(rows)} epochs, no validation)")
    test = test_metrics(paths.root, bootstrap=bootstrap, seed=seed) if paths.test_predictions.is_file() else None
    if test is not None:
        lines.append(f"test part      : {test['n']} held-out images: accuracy {_with_ci(test['accuracy'])}, "
                     f"ROC AUC {_with_ci(test['auc'])}")
    else:
        lines.append("test part      : none (the numbers above come from the validation part that chose the model)")
    lines.append(f"run folder     : {paths.root}")
    lines.append(f"log            : {paths.log}")
    if report is not None:
        lines.append(f"report         : {report}")
    if next_command is None:
        next_command = (f"cxrkit report {paths.root}" if report is None
                        else f"cxrkit run inference {paths.root} --input IMAGE_OR_FOLDER")
    lines.append(f"next           : {next_command}")
    return lines


def source_line(source: str, run_dir: str | Path, status: str, seconds: float, error: str | None = None) -> str:
    """One line per weight source of ``cxrkit compare``: best epoch, validation and test numbers, time."""
    if status != "finished":
        time = f"{seconds:7.1f} s  " if status != "skipped" else ""
        return f"{source:<24} {status:<9} {time}{error or ''}".rstrip()
    paths = RunPaths.of(run_dir)
    history = _history(paths)
    best = next((r for r in history.get("epochs") or [] if r.get("epoch") == history.get("best_epoch")), {})
    test = _test_points(paths)
    text = (f"{source:<24} {status:<9} {seconds:7.1f} s  best epoch {best.get('epoch', '-')}: val accuracy "
            f"{_num(best.get('val_accuracy'))} AUC {_num(best.get('val_auc'))}")
    if test is not None:
        text += f"  test accuracy {_num(test.get('accuracy'))} AUC {_num(test.get('auc'))}"
    return text


def _test_points(paths: RunPaths) -> dict[str, Any] | None:
    """``test/metrics.json``'s values (what the run's held-out evaluation wrote; no bootstrap)."""
    try:
        data = json.loads(paths.test_metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get("metrics", data) if isinstance(data, dict) else None


class TrainingConsole:
    """Ignite handler (trainer): the run's log file, one console line per epoch, and the closing summary.

    Attach it after the :class:`~cxrkit.engine.handlers.MetricsRecorder` (it prints the row the recorder wrote).

    Args:
        recorder: the run's metric history.
        log_file: the run folder's ``log.txt``; every log record of the run goes there.
        lines: print the epoch lines and the summary (``cxrkit compare`` prints one line per run instead).
        summary: print the closing summary (``cxrkit demo`` prints its own, with the report it writes).
        enabled: whether this process writes (rank 0 under torchrun).
        bootstrap: resamples of the summary's test-part intervals (0: none).
        seed: bootstrap seed.
    """

    def __init__(self, recorder: MetricsRecorder, log_file: str | Path, lines: Any = True, summary: Any = True,
                 enabled: Any = True, bootstrap: int = 1000, seed: int = 0) -> None:
        if not isinstance(recorder, MetricsRecorder):
            raise TypeError(f"recorder must be the run's MetricsRecorder, got {type(recorder).__name__}")
        self.recorder = recorder
        self.log_file = Path(log_file)
        self.lines = options.flag(lines, "console_lines")
        self.show_summary = options.flag(summary, "summary")
        self.enabled = bool(enabled)
        self.bootstrap = options.integer(bootstrap, "bootstrap", minimum=0)
        self.seed = int(seed)
        self._max_epochs: int | None = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        console.open_run_log(self.log_file)
        if self.lines:
            engine.add_event_handler(Events.STARTED, self.started)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def started(self, engine: Engine) -> None:
        self._max_epochs = int(engine.state.max_epochs or 0) or None
        console.write(f"training {self._max_epochs} epochs: {self.log_file.parent} (the whole log: "
                      f"{self.log_file.name})")

    def __call__(self, engine: Engine) -> None:
        rows = self.recorder.rows
        if not rows or rows[-1]["epoch"] != engine.state.epoch:
            return
        console.write(epoch_line(rows[-1], self._max_epochs, self.recorder.best_metric, self.recorder.best_value,
                                 self.recorder.best_epoch))

    def summary(self) -> list[str]:
        """Print (and return) the closing summary; the training config calls it after the test evaluation."""
        if not (self.enabled and self.lines and self.show_summary):
            return []
        found = run_summary(self.log_file.parent, bootstrap=self.bootstrap, seed=self.seed)
        console.write("")
        for line in found:
            console.write(line)
        return found


class RunLog:
    """Ignite handler (any engine): every log record of the run into ``log_file`` (an evaluation's ``log.txt``).

    Args:
        log_file: the file (appended to).
        enabled: whether this process writes.
    """

    def __init__(self, log_file: str | Path, enabled: Any = True) -> None:
        self.log_file = Path(log_file)
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            console.open_run_log(self.log_file)

