"""Export the clinicians' reviews as a CSV that cxrkit's ``csv`` dataset reads, for retraining.

Columns: ``image`` (path, relative to the CSV's folder or absolute), ``label``
(the reviewed class), ``study`` (datastore id), ``reviewer``, ``reviewed_at``,
``prediction``, ``probability``. No patient columns: the datastore holds none.

Images are referenced in place when the datastore is a local folder passed as
``studies`` (absolute paths), otherwise downloaded through ``/datastore/image``
into ``<csv stem>_images/`` beside the CSV.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cxrkit.review.client import LabelClient, ReviewError
from cxrkit.review.studies import Study, parse_studies

__all__ = ["ExportResult", "export_reviews", "COLUMNS"]

logger = logging.getLogger(__name__)

#: the CSV's columns, in order.
COLUMNS = ("image", "label", "study", "reviewer", "reviewed_at", "prediction", "probability")


@dataclass
class ExportResult:
    """What :func:`export_reviews` wrote.

    Attributes:
        csv: the CSV file.
        rows: reviewed studies written.
        skipped: studies without a review.
        downloaded: images downloaded (0 when referenced in place).
        image_dir: where downloaded images went (``None``: none downloaded).
        classes: the reviewed classes, sorted.
    """

    csv: Path
    rows: int
    skipped: int
    downloaded: int
    image_dir: Path | None
    classes: list[str]


def _safe_name(study: Study) -> str:
    name = Path(study.name).name or f"{study.id}{study.ext}"
    if name in ("", ".", "..") or name.startswith("."):
        name = f"study{study.ext or '.img'}"
    return name


def export_reviews(
    client: LabelClient,
    out_csv: str | os.PathLike,
    studies_dir: str | os.PathLike | None = None,
    download: bool | None = None,
) -> ExportResult:
    """Write the reviewed labels of a MONAI Label datastore as a ``csv`` dataset.

    Args:
        client: the MONAI Label server.
        out_csv: the CSV to write (folders are created).
        studies_dir: the local datastore folder the server was started with (``--studies``);
            its images are referenced by absolute path.
        download: force (``True``) or forbid (``False``) downloading; default: download unless
            ``studies_dir`` is given.

    Returns:
        The :class:`ExportResult`.

    Raises:
        ReviewError: no reviewed study, a missing image in ``studies_dir``, or the server fails.
    """
    out_csv = Path(out_csv).expanduser().resolve()
    if out_csv.suffix.lower() != ".csv":
        raise ReviewError(f"{out_csv}: the export must be a .csv file (e.g. reviews.csv)")
    local = Path(studies_dir).expanduser().resolve() if studies_dir else None
    if local is not None and not local.is_dir():
        raise ReviewError(f"--studies {studies_dir}: not a folder; pass the folder MONAI Label serves")
    download = (local is None) if download is None else bool(download)
    if not download and local is None:
        raise ReviewError("images must be downloaded unless --studies names the local datastore folder")
    try:
        studies = parse_studies(client.datastore())
    except ValueError as exc:
        raise ReviewError(f"{client.url}/datastore/: {exc}") from None
    reviewed = [s for s in studies if s.review is not None]
    if not reviewed:
        raise ReviewError(f"{client.url}: no study is reviewed yet; review some with `cxrkit review` first")
    unusable = [s for s in reviewed if s.review is not None and s.review.problem]
    if unusable:
        from cxrkit.data.classnames import POLICY

        listed = "; ".join(f"study {s.id!r}: label {s.review.label!r}: {s.review.problem}"  # type: ignore[union-attr]
                           for s in unusable[:5])
        raise ReviewError(
            f"{client.url}: {len(unusable)} stored review label(s) cannot be used as class names ({listed}"
            f"{'; ...' if len(unusable) > 5 else ''}). Review those studies again with `cxrkit review` (a new "
            f"review replaces the label) or delete their final labels; {POLICY}."
        )
    image_dir = out_csv.parent / f"{out_csv.stem}_images"
    rows, used, downloaded = [], set(), 0
    from tqdm.auto import tqdm

    for study in tqdm(reviewed, desc="exporting reviews", unit="study", leave=False):
        if download:
            name, n = _safe_name(study), 1
            while name.lower() in used:
                n += 1
                name = f"{Path(_safe_name(study)).stem}_{n}{''.join(Path(_safe_name(study)).suffixes)}"
            used.add(name.lower())
            image_dir.mkdir(parents=True, exist_ok=True)
            target = image_dir / name
            tmp = target.with_name(f".{target.name}.part")
            tmp.write_bytes(client.image(study.id))
            os.replace(tmp, target)
            downloaded += 1
            path = target.relative_to(out_csv.parent).as_posix()
        else:
            source = local / study.name
            if not source.is_file():
                raise ReviewError(
                    f"{source}: the image of study {study.id!r} is not in --studies {local}; pass the folder "
                    "the MONAI Label server was started with, or leave out --studies to download the images"
                )
            path = str(source)
        r = study.review
        rows.append({
            "image": path, "label": r.label, "study": study.id, "reviewer": r.reviewer or "",
            "reviewed_at": r.reviewed_at or "", "prediction": r.prediction or "",
            "probability": "" if r.probability is None else f"{r.probability:.6f}",
        })
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp_csv = out_csv.with_name(f".{out_csv.name}.part")
    with open(tmp_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp_csv, out_csv)
    classes = sorted({r["label"] for r in rows})
    logger.info("exported %d reviews (%d classes) to %s", len(rows), len(classes), out_csv)
    return ExportResult(csv=out_csv, rows=len(rows), skipped=len(studies) - len(reviewed), downloaded=downloaded,
                        image_dir=image_dir if downloaded else None, classes=classes)
