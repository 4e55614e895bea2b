"""The report of one run folder: the study's tables and figures with bootstrap confidence intervals.

:func:`write_report` reads a run folder (see :mod:`cxrkit.report.runfolder`)
and writes ``report.md`` with its PNG figures beside it and a self-contained
``report.html``. :func:`evaluate_run` is the metric part alone; the
comparison report reuses it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from cxrkit import options
from cxrkit.runfolder import RunPaths
from cxrkit.report.bootstrap import Interval, bootstrap_intervals
from cxrkit.report.document import Callout, Document, Figure, Heading, Paragraph, to_markdown
from cxrkit.report.figures import confusion_figure, curves_figure, roc_figure
from cxrkit.report.html import to_html
from cxrkit.report.identity import data_blocks, identity_table, unfinished
from cxrkit.report.metrics import ClassificationMetrics, compute_metrics, headline, headline_labels, point_values
from cxrkit.report.runfolder import RunFolder, load_run, resolve_positive
from cxrkit.report.tables import (
    accuracy_summary_table,
    classification_table,
    confusion_table,
    headline_table,
    one_vs_rest_table,
)

__all__ = ["RunEvaluation", "evaluate_run", "build_report", "write_report", "write_document", "bootstrap_note"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunEvaluation:
    """A run folder with its metrics.

    Attributes:
        run: the run folder.
        positive: positive class index in use, or None (one-vs-rest for every class).
        metrics: scikit-learn point estimates on the validation predictions.
        labels: headline key -> display label.
        point: headline key -> point estimate.
        intervals: headline key -> bootstrap interval; None when the bootstrap is off.
        seed: the bootstrap seed.
    """

    run: RunFolder
    positive: int | None
    metrics: ClassificationMetrics
    labels: dict[str, str]
    point: dict[str, float]
    intervals: dict[str, Interval] | None
    seed: int


def evaluate_run(run: RunFolder, *, positive: str | int | None = None, bootstrap: int = 1000,
                 seed: int = 0) -> RunEvaluation:
    """Compute a run's metrics and bootstrap intervals.

    Args:
        run: a loaded run folder.
        positive: positive class (name or index); default the run's ``positive_class``,
            else class 0 for binary runs, else none (one-vs-rest per class).
        bootstrap: number of bootstrap resamples; 0 switches the intervals off.
        seed: bootstrap seed.

    Returns:
        The evaluation.

    Raises:
        ValueError: ``positive`` names no class, or ``bootstrap`` is negative.
    """
    bootstrap = options.integer(bootstrap, "bootstrap", minimum=0)
    pos = resolve_positive(run.classes, positive, run.positive_class)
    metrics = compute_metrics(run.y_true, run.y_prob, run.y_pred, run.classes)
    labels = headline_labels(run.classes, pos)
    point = {k: float(v) for k, v in headline(point_values(metrics), run.classes, pos).items()}
    intervals = None
    if bootstrap:
        intervals = bootstrap_intervals(run.y_true, run.y_prob, run.y_pred, classes=run.classes, positive=pos,
                                        n_resamples=bootstrap, seed=seed)
    return RunEvaluation(run, pos, metrics, labels, point, intervals, seed)


def bootstrap_note(ev: RunEvaluation) -> str:
    """One sentence on how the intervals were computed and what was skipped."""
    if ev.intervals is None:
        return "Confidence intervals not computed (bootstrap switched off)."
    any_ci = next(iter(ev.intervals.values()))
    note = (f"{any_ci.confidence:.0%} confidence intervals: percentile bootstrap, {any_ci.n_resamples} resamples of "
            f"the {ev.metrics.n} validation images with replacement, seed {ev.seed}.")
    skipped = {ev.labels[k]: ci.n_skipped for k, ci in ev.intervals.items() if ci.n_skipped}
    if skipped:
        note += " Resamples skipped because the metric was undefined there (a class missing): " + ", ".join(
            f"{label} {n} of {any_ci.n_resamples}" for label, n in skipped.items()) + "."
    else:
        note += " No resample was skipped."
    return note


def build_report(ev: RunEvaluation, out_dir: Path) -> Document:
    """Build the report document of one run and write its figures into ``out_dir``.

    Args:
        ev: the evaluated run.
        out_dir: folder for the PNG figures (and later the report files).

    Returns:
        The document (render with :func:`write_document`).
    """
    run, m = ev.run, ev.metrics
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"Run report: {run.source_label} ({run.name})")
    doc.add(Paragraph(
        f"Validation results of the best model of run `{run.name}`: {m.n} images, {m.n_classes} classes. "
        "Every number below is computed from the run folder's `predictions.csv` and `metrics.json`."))
    if (problem := unfinished(run)) is not None:
        doc.add(Callout(problem))
    undefined = [c for k, c in enumerate(m.classes) if m.support[k] == 0]
    if undefined:
        doc.add(Callout(f"class(es) {', '.join(undefined)} have no validation image: metrics that need one (their "
                        "recall / sensitivity, the specificity of a binary run's other class, ROC AUC) are undefined "
                        "and shown as 0 (scikit-learn's zero_division=0) or n/a; the macro averages include them."))
    doc.add(Heading("Run"), identity_table(run, ev.positive))
    doc.add(Heading("Data"), *data_blocks(run))

    doc.add(Heading("Headline metrics"), headline_table(ev.point, ev.intervals, ev.labels),
            Paragraph(bootstrap_note(ev)))
    doc.add(Heading("Per-class scores (Table 5 layout)"), classification_table(m),
            Paragraph("Precision, recall and F1 per class with scikit-learn (`zero_division=0`); "
                      "support = validation images of the class."))
    doc.add(Heading("Sensitivity, specificity and ROC AUC per class (one-vs-rest)"), one_vs_rest_table(m))

    roc = roc_figure(run.y_true, run.y_prob, m.classes, ev.positive, m.auc, out_dir / "roc.png", m.macro_auc)
    binary = ev.positive is not None and m.n_classes == 2
    doc.add(Heading("ROC curve"), Figure(roc.name, (
        f"ROC curve of {m.classes[ev.positive]} against {m.classes[1 - ev.positive]}" if binary
        else "One-vs-rest ROC curve of every class")))

    cm = confusion_figure(m.confusion, m.classes, out_dir / "confusion_matrix.png")
    doc.add(Heading("Confusion matrix"), confusion_table(m),
            Figure(cm.name, "Confusion matrix: counts (left) and normalised per true class (right)"))

    curves = curves_figure(run.epochs, out_dir / "curves.png", run.best_epoch)
    doc.add(Heading("Training curves"),
            Figure(curves.name, "Training and validation loss (left) and accuracy (right) by epoch"))
    doc.add(Heading("Accuracy over the epochs (Table 6 layout)"), accuracy_summary_table([(run.plugin, run.epochs)]),
            Paragraph("Max / min: the best and worst epoch accuracy (first epoch on ties); mean over all epochs."))
    return doc


def write_document(doc: Document, out_dir: Path, stem: str) -> Path:
    """Write ``<stem>.md`` and a self-contained ``<stem>.html`` into ``out_dir``.

    Args:
        doc: the document; its figures must already be in ``out_dir``.
        out_dir: the output folder.
        stem: file name without extension.

    Returns:
        The Markdown file's path.
    """
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(to_markdown(doc), encoding="utf-8")
    (out_dir / f"{stem}.html").write_text(to_html(doc, out_dir), encoding="utf-8")
    logger.info("wrote %s and %s.html", md_path, stem)
    return md_path


def write_report(run_dir: str | Path, out_dir: str | Path | None = None, *, bootstrap: int = 1000, seed: int = 0,
                 positive: str | int | None = None) -> Path:
    """Write the report of one run folder.

    Args:
        run_dir: the run folder.
        out_dir: where to write; default ``<run_dir>/report``.
        bootstrap: bootstrap resamples for the confidence intervals (0: none).
        seed: bootstrap seed.
        positive: positive class name or index (see :func:`evaluate_run`).

    Returns:
        Path of ``report.md`` (``report.html`` and the PNGs are beside it).

    Raises:
        RunFolderError: a run folder file is missing or malformed.
        ValueError: ``positive`` names no class, or ``bootstrap`` is negative.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else RunPaths(run.path).report
    ev = evaluate_run(run, positive=positive, bootstrap=bootstrap, seed=seed)
    doc = build_report(ev, out)
    return write_document(doc, out, "report")
