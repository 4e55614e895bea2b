"""What a run is: weight source, data, split counts, skipped images, leakage audit, software.

Everything comes from the run folder's own records (``weights.json``,
``summary.json``, ``split.json``, ``configs/metadata.json``,
``versions.json``). Nothing here reads image files or DICOM headers, so no
patient name, id or date can reach a report; free-form audit values are
reduced to scalars and list lengths for the same reason.
"""

from __future__ import annotations

import math
from pathlib import PurePath
from typing import Any, Mapping

from cxrkit.report.document import Block, BulletList, Paragraph, Table
from cxrkit.report.runfolder import RunFolder
from cxrkit.report.tables import counts_table

__all__ = ["identity_table", "data_blocks", "summary_part", "skipped_images", "weights_text", "unfinished"]

#: how many skipped image names a report lists before "... and N more"
MAX_LISTED = 10


def summary_part(summary: Mapping[str, Any], *names: str) -> Any:
    """The first of ``names`` present in ``summary.json`` (accepts the engine's spelling variants)."""
    for name in names:
        if name in summary:
            return summary[name]
    return None


def skipped_images(summary: Mapping[str, Any]) -> tuple[int | None, list[str]]:
    """Count and names of the images the data loader skipped as unreadable.

    Args:
        summary: ``summary.json``; ``skipped`` (or ``skipped_images`` / ``skipped_bad_images``)
            may be ``{"count": n, "images": [...]}``, a list of names or of
            ``{"image": ..., "reason": ...}``, or a count.

    Returns:
        ``(count or None when not recorded, names with reasons)``.
    """
    value = summary_part(summary, "skipped", "skipped_images", "skipped_bad_images", "bad_images")
    if value is None:
        return None, []
    if isinstance(value, (int, float)):
        return int(value), []
    if isinstance(value, Mapping):
        items = value.get("images") or value.get("names") or value.get("files") or []
    else:
        items = value
    names = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, Mapping):
            text = str(item.get("image") or item.get("path") or item.get("name") or "?")
            names.append(f"{text} ({item['reason']})" if item.get("reason") else text)
        else:
            names.append(str(item))
    count = value.get("count") if isinstance(value, Mapping) else None
    return (int(count) if isinstance(count, (int, float)) else len(names)), names


def _scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:g}"
    if isinstance(value, str):
        return value if len(value) <= 80 else value[:77] + "..."
    if isinstance(value, (list, tuple)):
        return f"{len(value)} item(s)"  # lists may hold group ids: count them, never print them
    return None


def _leakage_items(audit: Any) -> list[str]:
    if isinstance(audit, str):
        return [audit]
    if not isinstance(audit, Mapping):
        return []
    items = []
    for key, value in audit.items():
        if isinstance(value, Mapping):
            items += [f"{key}.{k}: {s}" for k, v in value.items() if (s := _scalar(v)) is not None]
        elif (s := _scalar(value)) is not None:
            items.append(f"{key}: {s}")
    return items


def unfinished(run: RunFolder) -> str | None:
    """A sentence when ``summary.json`` says the run did not finish (status running, failed, ...), else None."""
    status = run.summary.get("status")
    if status is None or str(status).lower() in {"finished", "completed", "done"}:
        return None
    return (f"run `{run.name}` has status '{status}' in summary.json: it did not finish, so its predictions and "
            "curves may not be final. Resume or re-run the training before relying on these numbers.")


_VERIFICATION_TEXT = {
    "verified": ", verified: matches the hash its origin publishes",
    "unverified": ", **UNVERIFIED**: does not match the hash its origin publishes (accepted by the user); "
                  "results may not be those of the published weights",
    "unverifiable": ", unverifiable: its origin publishes no hash",
}


def weights_text(run: RunFolder) -> str:
    """How the network was initialised, e.g. ``chexpert.pth.tar (sha256 1a2b3c4d5e6f)``."""
    w = run.weights
    if not w:
        return "not recorded (weights.json missing)"
    if w.get("pretrained") is False:
        return "none: trained from random initialisation"
    name = PurePath(str(w["path"])).name if w.get("path") else "built-in"
    text = f"{name} (sha256 `{run.sha256_short}`)" if run.sha256_short else f"{name} (sha256 not recorded)"
    return text + _VERIFICATION_TEXT.get(run.weights_verification, "")


def identity_table(run: RunFolder, positive: int | None) -> Table:
    """The run's identity as Field / Value rows.

    Args:
        run: the run folder.
        positive: the positive class index in use, or None.

    Returns:
        A two-column table.
    """
    versions = run.versions
    software = ", ".join(f"{k} {versions[k]}" for k in ("cxrkit", "torch", "monai", "ignite") if versions.get(k))
    if versions.get("device"):
        software += f" on {versions['device']}"
    wall = summary_part(run.summary, "wall_time_s", "wall_time", "wall_time_seconds")
    n_epochs = len(run.epochs)
    best = (f"{run.best_metric or 'validation metric'} at epoch {run.best_epoch} of {n_epochs}"
            if run.best_epoch is not None else f"not recorded ({n_epochs} epochs)")
    split = run.split or {}
    counts = split.get("counts") or {}
    sizes = [sum(int(v) for v in (counts.get(p) or {}).values()) for p in ("train", "val", "test")]
    parts = ("train / validation / test " + " / ".join(str(n) for n in sizes) if sizes[2]
             else "train / validation " + " / ".join(str(n) for n in sizes[:2]) + ", no held-out test part")
    split_text = "not recorded (split.json missing)" if run.split is None else (
        f"fold {run.fold}" + (f" of {split.get('folds') or split['n_folds']}" if split.get("folds") or split.get("n_folds") else "") + f" ({parts} images)"
        if run.fold is not None else f"{parts} images")
    if split.get("seed") is not None:
        split_text += f", seed {split['seed']}"
    rows = [
        ["Run folder", f"`{run.name}`"],
        ["Weight source (plugin)", run.source_label],
        ["Architecture", str(run.weights.get("architecture") or "not recorded")],
        ["Pretrained weights", weights_text(run)],
        ["Dataset", run.dataset or "not recorded"],
        ["Task", run.task or str(run.summary.get("task") or "not recorded")],
        ["Classes", ", ".join(f"{c} ({k})" for k, c in enumerate(run.classes))],
        ["Positive class", run.classes[positive] if positive is not None else "none: one-vs-rest for every class"],
        ["Split", split_text],
        ["Best model", best],
        ["Validation images (predictions.csv)", str(len(run.y_true))],
        ["Test images (test/predictions.csv)", str(run.test.n) if run.test is not None else "none: no test part"],
        ["Status", str(run.summary.get("status") or "not recorded")],
        ["Wall time", f"{float(wall) / 60:.1f} min" if isinstance(wall, (int, float)) else "not recorded"],
        ["Software", software or "not recorded (versions.json missing)"],
    ]
    return Table(["Field", "Value"], rows, align=["l", "l"])


def data_blocks(run: RunFolder) -> list[Block]:
    """Counts per class and split, skipped bad images, and the leakage audit summary.

    Args:
        run: the run folder.

    Returns:
        Blocks for the report's data section.
    """
    blocks: list[Block] = []
    counts = summary_part(run.summary, "counts", "counts_per_split", "class_counts")
    table = counts_table(counts, run.classes) if isinstance(counts, Mapping) else None
    blocks.append(table if table else Paragraph("Counts per split: not recorded in `summary.json`."))
    count, names = skipped_images(run.summary)
    if count is None:
        blocks.append(Paragraph("Skipped bad images: not recorded in `summary.json`."))
    else:
        blocks.append(Paragraph(f"Skipped bad images: **{count}**."))
        if names:
            listed = [f"`{n}`" for n in names[:MAX_LISTED]]
            if len(names) > MAX_LISTED:
                listed.append(f"... and {len(names) - MAX_LISTED} more (see `summary.json`)")
            blocks.append(BulletList(listed))
    audit = summary_part(run.summary, "leakage", "leakage_audit")
    items = _leakage_items(audit)
    if items:
        blocks += [Paragraph("Leakage audit (what the parts of the split share):"), BulletList(items)]
    else:
        blocks.append(Paragraph("Leakage audit: not recorded in `summary.json`."))
    if run.missing:
        blocks.append(Paragraph("Files absent from the run folder: " + ", ".join(f"`{m}`" for m in run.missing) + "."))
    return blocks
