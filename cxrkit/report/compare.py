"""One comparison report across run folders trained on the same split (or the same k folds).

Each weight source is one entry, ranked by accuracy on the headline split,
then macro F1. The headline split is the held-out TEST part when every run has
one (the same images for every source), else the validation part, with a
warning that it also chose each model. Several run folders of the same plugin
whose split manifests carry different ``fold`` numbers form a k-fold group: on
the test part, every fold's model predicts the same images and the group's
prediction is the mean of the fold models' probabilities (an ensemble); on the
validation part the tables use the pooled out-of-fold predictions (every image
predicted once, by the model that did not train on it). A cross-validation
section lists each fold with the mean ± sample standard deviation (ddof=1)
across folds. A section puts internal (validation, test) and external results
(``external/<name>/`` of each run) side by side. Runs that share a fold must
share the split manifest and the validation images; when they do not, the
comparison is not like for like, and a :class:`SplitMismatchWarning` is
issued, logged and printed at the top of the report.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from cxrkit.report.document import BulletList, Callout, Document, Figure, Heading, Paragraph, Table, fmt
from cxrkit.report.figures import comparison_curves_figure, confusion_grid_figure, curve_arrays
from cxrkit.report.evaluations import TEST, VALIDATION, SplitPredictions, describe_split
from cxrkit.report.identity import unfinished
from cxrkit.report.report import RunEvaluation, evaluate_predictions, evaluate_run, write_document
from cxrkit.report.runfolder import RunFolder, load_run
from cxrkit.report.sources import sources_table
from cxrkit.report.trust import with_ci
from cxrkit.report.tables import accuracy_summary_table

__all__ = [
    "write_comparison",
    "check_splits",
    "group_runs",
    "SourceEntry",
    "SplitMismatchWarning",
    "fold_table",
    "ranking_table",
    "table5",
    "summary_keys",
]

logger = logging.getLogger(__name__)

#: manifest keys that may differ between identical splits (when the manifest was written)
VOLATILE_KEYS = frozenset({"created", "created_at", "timestamp", "time", "written_at"})


class SplitMismatchWarning(UserWarning):
    """Run folders compared side by side were not trained and validated on the same split."""


@dataclass(frozen=True)
class SourceEntry:
    """One weight source in a comparison: a single run or a k-fold group.

    Attributes:
        label: display name (the plugin, or ``plugin (run folder)`` for repeated runs).
        folds: per-run evaluations, ordered by fold (one element for a single run).
        pooled: the evaluation whose numbers the tables show (pooled folds for a k-fold group).
    """

    label: str
    folds: tuple[RunEvaluation, ...]
    pooled: RunEvaluation

    @property
    def is_kfold(self) -> bool:
        """Whether this entry is a k-fold group."""
        return len(self.folds) > 1


def _canonical(manifest: dict) -> str:
    return json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE_KEYS}, sort_keys=True, default=str)


def check_splits(runs: Sequence[RunFolder]) -> list[str]:
    """Check that runs sharing a fold share the split manifest and the validation images.

    Every problem found is warned (:class:`SplitMismatchWarning`) and logged.

    Args:
        runs: the loaded run folders.

    Returns:
        The problems, as sentences (empty when the splits agree).
    """
    problems = []
    no_manifest = [r.name for r in runs if r.split is None]
    if no_manifest:
        problems.append(f"no split.json in {', '.join(no_manifest)}: cannot verify these runs used the same split.")
    by_fold: dict[int | None, list[RunFolder]] = defaultdict(list)
    for run in runs:
        if run.split is not None:
            by_fold[run.fold].append(run)
    if None in by_fold and len(by_fold) > 1:
        problems.append("some runs use a single train/validation split and others cross-validation folds; "
                        "their numbers are not comparable.")
    for fold, group in sorted(by_fold.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0)):
        where = "" if fold is None else f" (fold {fold})"
        ref = group[0]
        differ = [r.name for r in group[1:] if _canonical(r.split) != _canonical(ref.split)]
        if differ:
            problems.append(f"split manifests differ{where}: {', '.join(differ)} vs {ref.name}; these runs were "
                            "trained or validated on different images. Re-run them on one split manifest.")
        images = sorted(ref.images)
        differ = [r.name for r in group[1:] if sorted(r.images) != images]
        if differ:
            problems.append(f"validation images in predictions.csv differ{where}: {', '.join(differ)} vs {ref.name}.")
    for problem in problems:
        warnings.warn(f"split mismatch: {problem}", SplitMismatchWarning, stacklevel=2)
        logger.warning("split mismatch: %s", problem)
    return problems


def group_runs(runs: Sequence[RunFolder]) -> list[tuple[str, list[RunFolder]]]:
    """Group runs into sources: one plugin with distinct folds is a k-fold group, otherwise one run each.

    Runs whose weights were unverified form their own sources, labelled ``plugin (UNVERIFIED weights)``.

    Args:
        runs: the loaded run folders.

    Returns:
        ``(label, runs ordered by fold)`` per source, in first-seen order.
    """
    by_plugin: dict[str, list[RunFolder]] = defaultdict(list)
    for run in runs:
        by_plugin[run.source_label].append(run)
    groups = []
    for plugin, members in by_plugin.items():
        folds = [r.fold for r in members]
        if len(members) == 1:
            groups.append((plugin, members))
        elif None not in folds and len(set(folds)) == len(folds):
            groups.append((plugin, sorted(members, key=lambda r: r.fold)))
        else:
            groups += [(f"{plugin} ({r.name})", [r]) for r in members]
    return groups


def _pool(runs: list[RunFolder]) -> RunFolder:
    return replace(
        runs[0],
        images=[i for r in runs for i in r.images],
        y_true=np.concatenate([r.y_true for r in runs]),
        y_pred=np.concatenate([r.y_pred for r in runs]),
        y_prob=np.concatenate([r.y_prob for r in runs]),
    )


def _ensemble(runs: list[RunFolder], split: str) -> SplitPredictions:
    """The k fold models' mean probabilities on the images they all predicted (the shared test part)."""
    sets = [r.predictions(split) for r in runs]
    common = sorted(set(sets[0].images).intersection(*(s.images for s in sets[1:])))
    if len(common) < len(sets[0].images):
        logger.warning("%s: the folds' %s images differ; the ensemble uses the %d they share", runs[0].plugin,
                       split, len(common))
    rows = [{img: k for k, img in enumerate(s.images)} for s in sets]
    y_true = sets[0].y_true[[rows[0][i] for i in common]]
    prob = np.mean([s.y_prob[[row[i] for i in common]] for s, row in zip(sets, rows)], axis=0)
    return SplitPredictions(split, common, y_true, prob.argmax(1), prob, sets[0].source)


def _evaluate_group(members: list[RunFolder], split: str, positive: str | int | None, bootstrap: int,
                    seed: int) -> RunEvaluation:
    """A k-fold group's evaluation on ``split``: pooled out-of-fold (validation) or the fold ensemble."""
    if split == VALIDATION:
        return evaluate_run(_pool(members), positive=positive, bootstrap=bootstrap, seed=seed, split=VALIDATION)
    return evaluate_predictions(members[0], _ensemble(members, split), positive=positive, bootstrap=bootstrap,
                                seed=seed)




def summary_keys(ev: RunEvaluation) -> dict[str, str]:
    """Headline keys for one-row-per-source tables: per-class sensitivity/specificity only for a positive class."""
    return {k: v for k, v in ev.labels.items() if "/" not in k or ev.positive is not None}


def ranking_table(entries: Sequence[SourceEntry]) -> Table:
    """Ranked summary: one row per source with headline metrics and their CIs."""
    keys = summary_keys(entries[0].pooled)
    rows = [[str(rank), e.label, str(len(e.folds)) if e.is_kfold else "–", *(with_ci(e.pooled, k) for k in keys),
             str(e.pooled.metrics.n)] for rank, e in enumerate(entries, start=1)]
    return Table(["Rank", "Source", "Folds", *keys.values(), "Images"], rows)


def table5(entries: Sequence[SourceEntry]) -> Table:
    """The study's Table 5 across sources: a block of class rows per source, accuracy on its first row."""
    rows = []
    for rank, e in enumerate(entries, start=1):
        m = e.pooled.metrics
        for k, cls in enumerate(m.classes):
            first = k == 0
            rows.append([str(rank) if first else "", e.label if first else "", cls, fmt(m.precision[k]),
                         fmt(m.sensitivity[k]), fmt(m.f1[k]), str(int(m.support[k])),
                         with_ci(e.pooled, "accuracy") if first else ""])
    return Table(["Rank", "Source", "Class", "Precision", "Sensitivity", "F1", "Support", "Accuracy (95% CI)"], rows)


def fold_table(entry: SourceEntry) -> Table:
    """Per-fold metrics of a k-fold group with mean ± std (ddof=1) and the pooled out-of-fold row."""
    columns = summary_keys(entry.pooled)
    rows, values = [], defaultdict(list)
    for ev in entry.folds:
        cells = []
        for key in columns:
            values[key].append(ev.point[key])
            cells.append(fmt(ev.point[key]))
        rows.append([str(ev.run.fold), f"`{ev.run.name}`", *cells, str(ev.metrics.n)])
    stats = []
    for key in columns:
        v = np.asarray(values[key], dtype=float)
        stats.append("n/a" if np.isnan(v).any() else f"{v.mean():.4f} ± {v.std(ddof=1):.4f}")
    rows.append(["mean ± std", "", *stats, str(sum(ev.metrics.n for ev in entry.folds))])
    pooled = "out-of-fold predictions" if entry.pooled.split == VALIDATION else "mean of the fold models"
    rows.append(["pooled", pooled, *(fmt(entry.pooled.point[k]) for k in columns),
                 str(entry.pooled.metrics.n)])
    return Table(["Fold", "Run", *columns.values(), "Images"], rows)


def _bootstrap_note(entries: Sequence[SourceEntry], n_resamples: int, seed: int, split: str = VALIDATION) -> str:
    if not n_resamples:
        return "Confidence intervals not computed (bootstrap switched off)."
    pooled = "the shared test images" if split == TEST else "the pooled out-of-fold images"
    note = (f"95% confidence intervals: percentile bootstrap, {n_resamples} resamples with replacement of each "
            f"source's {split} images (k-fold groups: {pooled}), seed {seed}.")
    skipped = [f"{e.label}: {e.pooled.labels[k]} {ci.n_skipped}" for e in entries
               for k, ci in (e.pooled.intervals or {}).items() if ci.n_skipped]
    if skipped:
        return note + " Resamples skipped because the metric was undefined there (a class missing): " + "; ".join(
            skipped) + f" (of {n_resamples})."
    return note + " No resample was skipped."


def validation_table(entries: Sequence[SourceEntry], groups: Sequence[tuple[str, list[RunFolder]]],
                     positive: str | int | None, bootstrap: int, seed: int) -> list:
    """Accuracy (95% CI) of each source on validation, test and every external collection, side by side."""
    members = dict(groups)
    names = sorted({n for _, runs in groups for r in runs for n in r.external})
    splits = [VALIDATION] + ([TEST] if any(r.test is not None for _, runs in groups for r in runs) else [])
    splits += [f"external: {n}" for n in names]
    rows = []
    for e in entries:
        runs = members[e.label]
        cells = []
        for split in splits:
            have = all(split in r.splits for r in runs)
            if not have:
                cells.append("–")
            elif e.pooled.split == split:
                cells.append(with_ci(e.pooled, "accuracy"))
            elif len(runs) == 1:
                cells.append(with_ci(evaluate_run(runs[0], positive=positive, bootstrap=bootstrap, seed=seed,
                                                  split=split), "accuracy"))
            else:
                cells.append(with_ci(_evaluate_group(runs, split, positive, bootstrap, seed), "accuracy"))
        rows.append([e.label, *cells])
    blocks: list = [Table(["Source", *(f"{s} accuracy" for s in splits)], rows)]
    text = ("Accuracy with 95% bootstrap intervals on each split. Validation chose each model (optimistic); test is "
            "held out from the same collection; external columns are other collections mapped onto these classes "
            "(`cxrkit external`). A large drop from test to external is the signature of a model that learned its "
            "sources rather than the disease.")
    if not names:
        text += " No run has an external evaluation yet."
    blocks.append(Paragraph(text))
    return blocks


def _runs_table(entries: Sequence[SourceEntry]) -> Table:
    rows = []
    for e in entries:
        for ev in e.folds:
            r = ev.run
            rows.append([e.label, f"`{r.name}`", "–" if r.fold is None else str(r.fold),
                         (f"`{r.sha256_short}`" if r.sha256_short else "not recorded")
                         + (" UNVERIFIED" if r.weights_verification == "unverified" else ""),
                         f"{r.best_metric or '?'} @ {r.best_epoch}", str(len(r.epochs)), str(ev.metrics.n)])
    return Table(["Source", "Run folder", "Fold", "Weights sha256", "Best model", "Epochs", "Images"], rows)


def write_comparison(run_dirs: list[Path], out_dir: Path, *, bootstrap: int = 1000, seed: int = 0,
                     skipped: dict[str, str] | None = None, positive: str | int | None = None) -> Path:
    """Write one comparison report (``comparison.md``, ``comparison.html``, PNGs) across run folders.

    Args:
        run_dirs: the run folders (several per plugin with different folds form a k-fold group).
        out_dir: where to write.
        bootstrap: bootstrap resamples for each source's intervals (0: none).
        seed: bootstrap seed.
        skipped: plugin -> reason it was not trained (listed in the report).
        positive: positive class name or index; default the first run's ``positive_class``.

    Returns:
        Path of ``comparison.md``.

    Raises:
        ValueError: no run folders, or runs with different classes.
        RunFolderError: a run folder file is missing or malformed.
    """
    if not run_dirs:
        raise ValueError("write_comparison needs at least one run folder")
    runs = [load_run(d) for d in run_dirs]
    for r in runs[1:]:
        if r.classes != runs[0].classes:
            raise ValueError(f"{r.path}: classes {r.classes} differ from {runs[0].path}: {runs[0].classes}; "
                             "a comparison needs runs trained on the same classes.")
    problems = check_splits(runs)
    if positive is None and len({r.positive_class for r in runs}) > 1:
        logger.warning("runs disagree on positive_class; using %r from %s", runs[0].positive_class, runs[0].name)
    positive = positive if positive is not None else runs[0].positive_class

    split = TEST if all(r.test is not None for r in runs) else VALIDATION
    groups = group_runs(runs)
    entries = []
    for label, members in tqdm(groups, desc="evaluating sources", unit="source", disable=None, leave=False):
        if len(members) == 1:
            ev = evaluate_run(members[0], positive=positive, bootstrap=bootstrap, seed=seed, split=split)
            entries.append(SourceEntry(label, (ev,), ev))
        else:
            folds = tuple(evaluate_run(r, positive=positive, bootstrap=0, seed=seed, split=split) for r in members)
            pooled = _evaluate_group(members, split, positive, bootstrap, seed)
            entries.append(SourceEntry(label, folds, pooled))
    entries.sort(key=lambda e: (-e.pooled.metrics.accuracy, -e.pooled.metrics.macro["f1"], e.label))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = entries[0].pooled
    classes = first.metrics.classes
    doc = Document(f"Comparison of {len(entries)} weight source{'s' if len(entries) != 1 else ''}")
    for problem in problems:
        doc.add(Callout("split mismatch: " + problem))
    for run in runs:
        if (problem := unfinished(run)) is not None:
            logger.warning("%s", problem)
            doc.add(Callout(problem))
    pos_text = classes[first.positive] if first.positive is not None else "none (one-vs-rest for every class)"
    pooled_text = ("k-fold groups show the mean of their fold models' probabilities on the shared test images"
                   if split == TEST else "k-fold groups show the pooled out-of-fold predictions")
    doc.add(Paragraph(
        f"Dataset: {first.run.dataset or 'not recorded'}; classes: {', '.join(classes)}; positive class: {pos_text}. "
        f"Headline split: **{split}** ({describe_split(split)}). Sources are ranked by {split} accuracy, then macro "
        f"F1. Values in brackets are 95% bootstrap confidence intervals; {pooled_text}."))
    if split != TEST:
        doc.add(Callout("not every run has a held-out test part: the ranking uses the VALIDATION part, which also "
                        "chose each model's best epoch, so every number is optimistic. Train with --test_fraction "
                        "0.2 (the default) for an honest comparison."))
    doc.add(Heading(f"Ranking ({split} images)"), ranking_table(entries),
            Paragraph(_bootstrap_note(entries, bootstrap, seed, split)))
    doc.add(Heading(f"Per-class scores (Table 5 layout, {split} images)"), table5(entries))
    doc.add(Heading("Internal and external validation"), *validation_table(entries, groups, positive, bootstrap, seed))
    table6_runs = [(e.label if not e.is_kfold else f"{e.label} (fold {ev.run.fold})", ev.run.epochs)
                   for e in entries for ev in e.folds]
    doc.add(Heading("Accuracy over the epochs (Table 6 layout, training and validation parts)"),
            accuracy_summary_table(table6_runs, "Source"))
    series = {e.label + (f" ({len(e.folds)} folds)" if e.is_kfold else ""):
              curve_arrays([ev.run.epochs for ev in e.folds]) for e in entries}
    curves = comparison_curves_figure(series, out_dir / "curves.png")
    doc.add(Heading("Training curves (training and validation parts)"), Figure(curves.name, (
        "Training and validation loss and accuracy by epoch, one line per source (k-fold groups: mean ± 1 std)")))
    grid = confusion_grid_figure({e.label: e.pooled.metrics.confusion for e in entries}, classes,
                                 out_dir / "confusion_matrices.png")
    doc.add(Heading(f"Confusion matrices ({split} images)"),
            Figure(grid.name, f"Confusion matrices of the {split} images, normalised per true class (counts in "
                              "brackets)"))
    kfold = [e for e in entries if e.is_kfold]
    if kfold:
        doc.add(Heading(f"Cross-validation folds ({split} images)"),
                Paragraph(f"Per-fold metrics on the {split} images; mean ± sample standard deviation (ddof=1) "
                          "across folds."))
        for e in kfold:
            doc.add(Heading(e.label, level=3), fold_table(e))
    doc.add(Heading("Skipped sources"))
    if skipped:
        doc.add(BulletList([f"**{plugin}**: {reason}" for plugin, reason in sorted(skipped.items())]))
    else:
        doc.add(Paragraph("None."))
    doc.add(Heading("Sources"), sources_table([(e.label, e.folds[0].run) for e in entries]))
    doc.add(Heading("Runs"), _runs_table(entries))
    return write_document(doc, out_dir, "comparison")
