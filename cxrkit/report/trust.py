"""The report sections that say whether a model can be trusted.

* :func:`split_blocks` - where the headline comes from (the held-out test part,
  or a warning that it comes from the split that chose the model);
* :func:`results_by_split` - internal (validation, test) and external results side by side;
* :func:`calibration_blocks` - expected calibration error and reliability
  diagrams, before and after the temperature fitted on validation;
* :func:`audit_blocks` - the shortcut audit (``audit/audit.json``, :mod:`cxrkit.audit`);
* :func:`near_duplicate_blocks` - near-duplicate images across parts and classes, as thumbnails.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from cxrkit.report.document import Block, BulletList, Callout, Figure, Paragraph, Table, fmt
from cxrkit.report.evaluations import TEST, VALIDATION, describe_split
from cxrkit.report.runfolder import RunFolder

__all__ = ["split_blocks", "results_by_split", "calibration_blocks", "audit_blocks", "near_duplicate_blocks",
           "with_ci"]

logger = logging.getLogger(__name__)


def with_ci(ev: Any, key: str) -> str:
    """``value (low – high)`` of one headline metric of an evaluation."""
    value = fmt(ev.point[key])
    ci = ev.intervals.get(key) if ev.intervals else None
    if ci is None or value == "n/a" or np.isnan(ci.low):
        return value
    return f"{value} ({ci.low:.4f} – {ci.high:.4f})"


def split_blocks(run: RunFolder, split: str) -> list[Block]:
    """Where the headline numbers come from, in words (a warning when not from a held-out test part)."""
    if split == TEST:
        return [Paragraph(
            f"**Headline numbers: the held-out test part** ({describe_split(TEST, run.test.n)}). The best epoch "
            f"was chosen on the validation part ({run.validation.n} images); its numbers, optimistic by "
            "construction, are under *Results by split*. Every table and figure names the split it comes from.")]
    note = (run.split or {}).get("test_note")
    text = ("no held-out test part: the headline numbers come from the VALIDATION part, which also chose the best "
            "epoch, so they are optimistic (the best of all epochs, picked on these very images). Train with "
            "`--test_fraction 0.2` (the default) for an honest estimate.")
    if note:
        text += f" Split manifest: {note}"
    return [Callout(text)]


def results_by_split(run: RunFolder, evaluate: Any) -> list[Block]:
    """One row per prediction set (validation, test, each external collection) with CIs.

    Args:
        run: the run folder.
        evaluate: ``split -> RunEvaluation`` (bootstrap settings of the report).
    """
    evs = [evaluate(split) for split in run.splits]
    keys = {k: v for k, v in evs[0].labels.items() if "/" not in k or evs[0].positive is not None}
    rows = []
    for ev in evs:
        kind = ("model selection" if ev.split == VALIDATION else "held-out, internal" if ev.split == TEST
                else "external")
        rows.append([ev.split, kind, str(ev.metrics.n), *(with_ci(ev, k) for k in keys)])
    blocks: list[Block] = [Table(["Split", "Role", "Images", *keys.values()], rows)]
    notes = []
    for name, preds in run.external.items():
        info = preds.info
        mapping = info.get("class_map") or {}
        mapped = ", ".join(f"{a} → {b}" for a, b in mapping.items()) or "same class names"
        options = ", ".join(f"{k}={v}" for k, v in (info.get("dataset_options") or {}).items())
        notes.append(f"external: {name}: dataset `{info.get('dataset') or '?'}`"
                     f"{', task ' + str(info['task']) if info.get('task') else ''}"
                     f"{f' (options {options})' if options else ''}; classes mapped {mapped}; {preds.n} images.")
    if notes:
        blocks.append(BulletList(notes))
    blocks.append(Paragraph(
        "Values in brackets: 95% percentile bootstrap intervals over each split's own images. The validation row "
        "is optimistic (it chose the model); a model that learned the disease keeps its test numbers on other "
        "collections, one that learned its sources' shortcuts does not."))
    return blocks


def calibration_blocks(run: RunFolder, split: str, y_true: np.ndarray, y_prob: np.ndarray,
                       out_dir: Path) -> list[Block]:
    """ECE and reliability diagrams of the ``split`` predictions, before and after the run's temperature."""
    from cxrkit.calibration import DEFAULT_BINS, expected_calibration_error, reliability_bins
    from cxrkit.report.trust_figures import reliability_figure

    panels = {"as trained": reliability_bins(y_true, y_prob)}
    eces = {"as trained": expected_calibration_error(y_true, y_prob)}
    cal = run.calibration
    rows = [[split, "as trained", str(len(y_true)), f"{eces['as trained']:.4f}"]]
    if cal is not None:
        scaled = cal.apply(y_prob)
        panels[f"temperature {cal.temperature:.3g}"] = reliability_bins(y_true, scaled)
        eces[f"temperature {cal.temperature:.3g}"] = expected_calibration_error(y_true, scaled)
        rows.append([split, f"temperature scaling (T = {cal.temperature:.3g}, fitted on {cal.fitted_on})",
                     str(len(y_true)), f"{eces[f'temperature {cal.temperature:.3g}']:.4f}"])
        rows.append([cal.fitted_on, "as trained / scaled (where T was fitted)", str(cal.n_images),
                     f"{cal.ece_before:.4f} / {cal.ece_after:.4f}"])
    figure = reliability_figure(panels, eces, out_dir / "reliability.png", split)
    blocks: list[Block] = [
        Table(["Split", "Probabilities", "Images", f"ECE ({DEFAULT_BINS} bins)"], rows),
        Figure(figure.name, f"Reliability diagram of the {split} predictions: accuracy per confidence bin; bars "
                            "below the diagonal are over-confident"),
    ]
    if cal is None:
        blocks.append(Paragraph(
            "Expected calibration error: how far, on average, the model's confidence is from how often it is right "
            "(0 = honest probabilities). No temperature has been fitted: `cxrkit calibrate RUN_DIR` (or training with "
            "`--calibrate true`) fits one on the validation part; `cxrkit predict`, the MONAI Label server and the "
            "review page then show calibrated probabilities."))
    else:
        blocks.append(Paragraph(
            f"{cal.describe()}. The temperature divides the logits before the softmax: no prediction changes, only "
            "how confident it is. `cxrkit predict`, `cxrkit run inference`, the MONAI Label server and the review "
            "page show the calibrated probabilities; `predictions.csv` files keep the uncalibrated ones."))
    return blocks


def audit_blocks(audit: Mapping[str, Any] | None, run_dir: Path, out_dir: Path, reason: str | None = None
                 ) -> list[Block]:
    """The shortcut audit's verdict, numbers and figures (copied into the report folder)."""
    if audit is None:
        return [Callout("Shortcut audit: not run" + (f" ({reason})" if reason else "") + ". Run `cxrkit audit "
                        f"{run_dir}` (needs the dataset): it tests whether the model needs what lies outside the "
                        "lungs (markers, borders, devices) to be right.")]
    occ, ev = audit["occlusion"], audit["evidence"]
    verdict = ("**Shortcut suspected.** " if audit["shortcut_suspected"] else "**No shortcut found.** ")
    blocks: list[Block] = [
        (Callout if audit["shortcut_suspected"] else Paragraph)(verdict + occ["verdict"]["text"] + " "
                                                                + ev["verdict"]["text"]),
        Paragraph(f"Audited: {audit['n_images']} images of the {'held-out test' if audit['part'] == 'test' else 'validation'} "
                  f"part{' (' + audit['part_note'] + ')' if audit.get('part_note') else ''}. Lung region: "
                  f"{audit['lung_region']['text']}."),
    ]
    rows = []
    for c in occ["conditions"]:
        name = "images as they are" if c["direction"] == "baseline" else (
            ("only the lungs kept" if c["direction"] == "keep_lungs" else "lungs removed")
            + (", replaced by another class's image" if c["fill"] == "donor" else ", replaced by a heavy blur"))
        follows = "–" if c["follows_donor"] is None else f"{c['follows_donor']:.0%}"
        rows.append([name, fmt(c["accuracy"]), fmt(c["balanced_accuracy"]), f"{c['changed']:.0%}", follows])
    blocks.append(Table(["Images shown to the model", "Accuracy", "Balanced accuracy", "Predictions changed",
                         "Follows the donor"], rows))
    blocks.append(Paragraph(f"Blur check (secondary): {occ['blur_check']['text']}"))
    for key, caption in (("occlusion", "Occlusion probe: accuracy with a region replaced, and how often the "
                                       "prediction follows the transplanted region"),
                         ("occlusion_examples", "What the occlusion probe showed the model"),
                         ("cam_energy", f"Share of Grad-CAM energy inside the lungs ({ev['layer']}, "
                                        f"{ev['grid'][0]}x{ev['grid'][1]} grid)"),
                         ("cam_least_inside", "Images with the least evidence inside the lungs")):
        name = audit.get("figures", {}).get(key)
        source = run_dir / "audit" / name if name else None
        if source is not None and source.is_file():
            target = out_dir / f"audit_{name}"
            shutil.copyfile(source, target)
            blocks.append(Figure(target.name, caption))
    blocks.append(Paragraph(
        "What these probes can show: a model that is right only with the surroundings of the lungs, or whose "
        "Grad-CAM evidence lies mostly outside them, has learned something other than the lung disease (DeGrave, "
        "Janizek and Lee, Nature Machine Intelligence 3, 610-619, 2021). What they cannot show: passing them does "
        "not prove the model learned the disease (a shortcut inside the lungs, e.g. image sharpness or a scanner's "
        "texture, passes both); see `docs/trust.md`."))
    return blocks


def near_duplicate_blocks(run: RunFolder, out_dir: Path) -> list[Block]:
    """Near-duplicate pairs across parts and across classes, as thumbnails when the dataset is reachable."""
    from cxrkit.report.trust_figures import pairs_figure

    audit = (run.split or {}).get("leakage_audit") or run.summary.get("leakage") or {}
    if not audit.get("near_duplicates_checked"):
        return [Paragraph("Near-duplicate images: not checked (`--near_duplicates false`, or a run made before "
                          "the check existed).")]
    across_parts = list(audit.get("near_duplicates") or [])
    across_classes = list(audit.get("near_duplicates_across_classes") or [])
    blocks: list[Block] = [Paragraph(
        f"Near-duplicate images (256-bit perceptual hash, at most {audit.get('near_duplicate_threshold')} bits "
        f"apart): **{len(across_parts)}** pair(s) in two parts of the split, **{len(across_classes)}** pair(s) "
        "with different classes. Copies of one radiograph in two parts inflate the test numbers; the split keeps "
        "the copies it knows of together.")]
    root = Path(str((run.split or {}).get("root") or ""))
    pairs = across_parts + [p for p in across_classes if p not in across_parts]
    if pairs and root.is_dir():
        figure = pairs_figure(pairs, root, out_dir / "near_duplicates.png")
        if figure is not None:
            blocks.append(Figure(figure.name, "Near-duplicate pairs (first 8): part / class of each file"))
    elif pairs:
        blocks.append(BulletList([f"`{p['a']}` ~ `{p['b']}` ({p['distance']} bits)" for p in pairs[:10]]))
    return blocks
