"""The report of one run folder: the study's tables and figures with bootstrap confidence intervals.

:func:`write_report` reads a run folder (see :mod:`cxrkit.report.runfolder`)
and writes ``report.md`` with its PNG figures beside it and a self-contained
``report.html``. The headline, Table 5, the ROC curve and the confusion matrix
come from the held-out TEST part when the run has one (else from the validation
part, with a warning that it also chose the model); every section says which
split its numbers come from. Sections on trust follow (:mod:`cxrkit.report.trust`):
results by split (internal and external side by side), calibration, the
shortcut audit and near-duplicate images. :func:`evaluate_run` is the metric
part alone; the comparison report reuses it.
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
from cxrkit.report.metrics import ClassificationMetrics, compute_metrics, headline, headline_labels
from cxrkit.report.evaluations import SplitPredictions, describe_split
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
        metrics: the point estimates (:mod:`cxrkit.metrics`) on the evaluated predictions.
        labels: headline key -> display label.
        point: headline key -> point estimate.
        intervals: headline key -> bootstrap interval; None when the bootstrap is off.
        seed: the bootstrap seed.
        predictions: the predictions evaluated (their ``split`` says which images they are).
    """

    run: RunFolder
    positive: int | None
    metrics: ClassificationMetrics
    labels: dict[str, str]
    point: dict[str, float]
    intervals: dict[str, Interval] | None
    seed: int
    predictions: SplitPredictions | None = None

    @property
    def split(self) -> str:
        """Which images these numbers come from: ``test``, ``validation`` or ``external: <name>``."""
        return self.predictions.split if self.predictions is not None else "validation"


def evaluate_run(run: RunFolder, *, positive: str | int | None = None, bootstrap: int = 1000,
                 seed: int = 0, split: str | None = None) -> RunEvaluation:
    """Compute a run's metrics and bootstrap intervals on one of its prediction sets.

    Args:
        run: a loaded run folder.
        positive: positive class (name or index); default the run's ``positive_class``,
            else class 0 for binary runs, else none (one-vs-rest per class).
        bootstrap: number of bootstrap resamples; 0 switches the intervals off.
        seed: bootstrap seed.
        split: ``test``, ``validation`` or ``external: <name>``; default the run's headline
            (the held-out test part when it has one, else validation).

    Returns:
        The evaluation.

    Raises:
        ValueError: ``positive`` names no class, or ``bootstrap`` is negative.
        RunFolderError: the run has no predictions of ``split``.
    """
    preds = run.headline if split is None else run.predictions(split)
    return evaluate_predictions(run, preds, positive=positive, bootstrap=bootstrap, seed=seed)


def evaluate_predictions(run: RunFolder, preds: SplitPredictions, *, positive: str | int | None = None,
                         bootstrap: int = 1000, seed: int = 0) -> RunEvaluation:
    """:func:`evaluate_run` on given predictions (e.g. pooled folds) of ``run``'s classes."""
    bootstrap = options.integer(bootstrap, "bootstrap", minimum=0)
    pos = resolve_positive(run.classes, positive, run.positive_class)
    metrics = compute_metrics(preds.y_true, preds.y_prob, preds.y_pred, run.classes)
    labels = headline_labels(run.classes, pos)
    point = headline(metrics.values, run.classes, pos, row=0)
    intervals = None
    if bootstrap:
        intervals = bootstrap_intervals(preds.y_true, preds.y_prob, preds.y_pred, classes=run.classes, positive=pos,
                                        n_resamples=bootstrap, seed=seed)
    return RunEvaluation(run, pos, metrics, labels, point, intervals, seed, preds)


def bootstrap_note(ev: RunEvaluation) -> str:
    """One sentence on how the intervals were computed and what was skipped."""
    if ev.intervals is None:
        return "Confidence intervals not computed (bootstrap switched off)."
    any_ci = next(iter(ev.intervals.values()))
    note = (f"{any_ci.confidence:.0%} confidence intervals: percentile bootstrap, {any_ci.n_resamples} resamples of "
            f"the {ev.metrics.n} {ev.split} images with replacement, seed {ev.seed}.")
    skipped = {ev.labels[k]: ci.n_skipped for k, ci in ev.intervals.items() if ci.n_skipped}
    if skipped:
        note += " Resamples skipped because the metric was undefined there (a class missing): " + ", ".join(
            f"{label} {n} of {any_ci.n_resamples}" for label, n in skipped.items()) + "."
    else:
        note += " No resample was skipped."
    return note


def build_report(ev: RunEvaluation, out_dir: Path, *, audit: dict | None = None,
                 audit_reason: str | None = None) -> Document:
    """Build the report document of one run and write its figures into ``out_dir``.

    Args:
        ev: the evaluated run (its headline split).
        out_dir: folder for the PNG figures (and later the report files).
        audit: the run's ``audit/audit.json`` (``None``: not audited).
        audit_reason: why there is no audit (shown in the report).

    Returns:
        The document (render with :func:`write_document`).
    """
    from cxrkit.report import trust

    run, m, split = ev.run, ev.metrics, ev.split
    preds = ev.predictions or run.headline
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Document(f"Run report: {run.source_label} ({run.name})")
    doc.add(Paragraph(
        f"Results of the best model of run `{run.name}` ({m.n_classes} classes). Headline split: **{split}** "
        f"({describe_split(split, m.n)}). Every number below is computed from the run folder's prediction files "
        "and `metrics.json`, and each section names its split."))
    doc.add(*trust.split_blocks(run, split))
    if (problem := unfinished(run)) is not None:
        doc.add(Callout(problem))
    undefined = [c for k, c in enumerate(m.classes) if m.support[k] == 0]
    if undefined:
        doc.add(Callout(f"class(es) {', '.join(undefined)} have no {split} image: metrics that need one (their "
                        "sensitivity and ROC AUC, their F1 when never predicted either, the specificity of a binary "
                        "run's other class) are undefined and shown as n/a; averages are over the classes where a "
                        "metric is defined, as in training's metrics.json."))
    doc.add(Heading("Run"), identity_table(run, ev.positive))
    doc.add(Heading("Data"), *data_blocks(run), *trust.near_duplicate_blocks(run, out_dir))

    doc.add(Heading(f"Headline metrics ({split} images)"), headline_table(ev.point, ev.intervals, ev.labels),
            Paragraph(bootstrap_note(ev)))
    doc.add(Heading("Results by split (internal and external)"),
            *trust.results_by_split(run, lambda s: ev if s == split else evaluate_run(
                run, positive=ev.positive, bootstrap=_resamples(ev), seed=ev.seed, split=s)))
    doc.add(Heading(f"Per-class scores (Table 5 layout, {split} images)"), classification_table(m),
            Paragraph("Precision, sensitivity (recall) and F1 per class; n/a where undefined (no precision for a "
                      "class never predicted, no sensitivity for a class without images), and the averages are over "
                      "the classes where the value is defined (scikit-learn's `zero_division=np.nan`); "
                      f"support = {split} images of the class."))
    doc.add(Heading(f"Sensitivity, specificity and ROC AUC per class (one-vs-rest, {split} images)"),
            one_vs_rest_table(m))

    roc = roc_figure(preds.y_true, preds.y_prob, m.classes, ev.positive, m.auc, out_dir / "roc.png", m.macro_auc)
    binary = ev.positive is not None and m.n_classes == 2
    doc.add(Heading(f"ROC curve ({split} images)"), Figure(roc.name, (
        f"ROC curve of {m.classes[ev.positive]} against {m.classes[1 - ev.positive]} ({split} images)" if binary
        else f"One-vs-rest ROC curve of every class ({split} images)")))

    cm = confusion_figure(m.confusion, m.classes, out_dir / "confusion_matrix.png")
    doc.add(Heading(f"Confusion matrix ({split} images)"), confusion_table(m),
            Figure(cm.name, f"Confusion matrix of the {split} images: counts (left) and normalised per true class "
                            "(right)"))
    doc.add(Heading(f"Calibration ({split} images)"),
            *trust.calibration_blocks(run, split, preds.y_true, preds.y_prob, out_dir))
    doc.add(Heading("Shortcut audit: is the model looking at the lungs?"),
            *trust.audit_blocks(audit, run.path, out_dir, audit_reason))

    curves = curves_figure(run.epochs, out_dir / "curves.png", run.best_epoch)
    doc.add(Heading("Training curves (training and validation parts)"),
            Figure(curves.name, "Training and validation loss (left) and accuracy (right) by epoch; the best epoch "
                                "was chosen on the validation part"))
    doc.add(Heading("Accuracy over the epochs (Table 6 layout, training and validation parts)"),
            accuracy_summary_table([(run.plugin, run.epochs)]),
            Paragraph("Max / min: the best and worst epoch accuracy on the validation part (first epoch on ties); "
                      "mean over all epochs. The max is the number a report that selects on validation would quote."))
    return doc


def _resamples(ev: RunEvaluation) -> int:
    return next(iter(ev.intervals.values())).n_resamples if ev.intervals else 0


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
                 positive: str | int | None = None, audit: str = "auto",
                 audit_options: dict | None = None) -> Path:
    """Write the report of one run folder.

    Args:
        run_dir: the run folder.
        out_dir: where to write; default ``<run_dir>/report``.
        bootstrap: bootstrap resamples for the confidence intervals (0: none).
        seed: bootstrap seed.
        positive: positive class name or index (see :func:`evaluate_run`).
        audit: ``auto`` (use ``audit/audit.json``; run the shortcut audit first when it is
            missing and the model and dataset are there), ``true`` (run it again), ``false``
            (leave it out; an earlier audit is still shown).
        audit_options: keyword arguments of :func:`cxrkit.audit.shortcuts.audit_run`.

    Returns:
        Path of ``report.md`` (``report.html`` and the PNGs are beside it).

    Raises:
        RunFolderError: a run folder file is missing or malformed.
        ValueError: ``positive`` names no class, or ``bootstrap`` is negative.
    """
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else RunPaths(run.path).report
    ev = evaluate_run(run, positive=positive, bootstrap=bootstrap, seed=seed)
    audit_data, reason = _audit(run.path, audit, audit_options or {})
    doc = build_report(ev, out, audit=audit_data, audit_reason=reason)
    return write_document(doc, out, "report")


def _audit(run_dir: Path, mode: str, audit_kwargs: dict) -> tuple[dict | None, str | None]:
    """The run's shortcut audit per ``mode`` (see :func:`write_report`), and why there is none."""
    from cxrkit.audit.shortcuts import audit_run, read_audit

    mode = str(mode).lower()
    if mode not in ("auto", "true", "false"):
        raise ValueError(f"audit must be auto, true or false, got {mode!r}")
    existing = read_audit(run_dir)
    if mode == "false" or (mode == "auto" and existing is not None):
        return existing, None if existing is not None else "switched off"
    if not RunPaths(run_dir).model.is_file():
        return existing, "the run folder has no models/model.pt"
    try:
        return audit_run(run_dir, **audit_kwargs).data, None
    except Exception as exc:  # noqa: BLE001 - the report is still written; the reason is shown in it
        if mode == "true":
            raise
        logger.warning("shortcut audit of %s not run: %s", run_dir, exc)
        return existing, f"it could not run: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
