"""The shortcut audit of a run folder: occlusion and Grad-CAM energy on the held-out test images.

:func:`audit_run` loads the run's best model (:func:`cxrkit.serve.load_model`),
takes the images of its split's test part (the validation part when the run
has none, said so), finds each image's lung region (:mod:`cxrkit.audit.lungs`),
and runs the two probes:

* occlusion (:mod:`cxrkit.audit.occlusion`): the metrics again with only the
  lungs kept and with the lungs removed, donor and blur fills;
* where the evidence lies (:mod:`cxrkit.audit.evidence`): the share of Grad-CAM
  energy inside the lungs.

It writes ``<run>/audit/audit.json`` (every number, the verdicts and
``shortcut_suspected``) and the figures beside it. ``shortcut_suspected`` is true
when either probe flags the model; see ``docs/trust.md`` for what each probe can
and cannot show (DeGrave, Janizek and Lee, Nature Machine Intelligence 3, 610-619, 2021).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrkit.console import bar_disable
from cxrkit.runfolder import RunPaths

__all__ = ["AuditError", "AuditResult", "audit_run", "read_audit", "AUDIT_FORMAT", "AUDIT_DIR"]

logger = logging.getLogger(__name__)

AUDIT_FORMAT = "cxrkit-audit/1"
#: the audit's folder inside a run folder.
AUDIT_DIR = "audit"


class AuditError(ValueError):
    """The audit cannot run (no model, no split, images moved...); the message says what to do."""


@dataclass
class AuditResult:
    """An audit: the JSON written and where.

    Attributes:
        data: everything in ``audit.json``.
        path: ``audit.json``.
    """

    data: dict[str, Any]
    path: Path

    @property
    def shortcut_suspected(self) -> bool:
        """Whether a probe flagged the model."""
        return bool(self.data["shortcut_suspected"])


def read_audit(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``<run>/audit/audit.json``, or ``None`` when the run has not been audited (or the file is corrupt)."""
    path = Path(run_dir) / AUDIT_DIR / "audit.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        logger.warning("%s: not valid JSON; run `cxrkit audit %s` again", path, run_dir)
        return None
    return data if isinstance(data, dict) and data.get("format") == AUDIT_FORMAT else None


def _stratified(items: list[tuple[str, int]], limit: int | None, seed: int) -> list[tuple[str, int]]:
    if limit is None or len(items) <= limit:
        return items
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for n, (_, label) in enumerate(items):
        by_class.setdefault(label, []).append(n)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_class.items())]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for q in queues:
            if q and len(chosen) < limit:
                chosen.append(int(q.pop()))
    return [items[n] for n in sorted(chosen)]


def _audit_items(run_dir: Path, classes: list[str], dataset_dir: str | None) -> tuple[list[tuple[str, int]], str, str,
                                                                                     str | None]:
    paths = RunPaths.of(run_dir)
    manifest = paths.read_split(classes, dataset_dir, same_names=True)  # labels in range, entries in the dataset
    if manifest is None:
        raise AuditError(f"{paths.split}: not found; the audit reads the run's test images from its split manifest. "
                         "Pass a run folder written by `cxrkit run training`.")
    part, note = "test", None
    if not manifest.entries("test"):
        part = "val"
        note = ("the run has no held-out test part: the audit uses the validation images, which also chose the "
                "best epoch")
    root = Path(manifest.root).expanduser()
    if not root.is_dir():
        raise AuditError(f"the dataset folder {root} recorded in {paths.split} does not exist; pass --dataset_dir DIR "
                         "where the dataset is now")
    return manifest.items(part), part, str(root), note


def _prepare(model: Any, items: list[tuple[str, int]], use_masks: bool, progress: bool
             ) -> tuple[torch.Tensor, np.ndarray, list[int], list[str], Counter, Counter, list[str]]:
    from tqdm.auto import tqdm

    from cxrkit.audit.lungs import lung_region
    from cxrkit.data.errors import BadImageError
    from cxrkit.data.readers import load_image
    from cxrkit.serve.gradcam import image_to_input

    tensors, masks, labels, names = [], [], [], []
    sources: Counter = Counter()
    rejected: Counter = Counter()
    skipped: list[str] = []
    for path, label in tqdm(items, desc="audit: reading images", unit="img", disable=bar_disable(progress), leave=False):
        try:
            grey = load_image(path)
            x = model.preprocessing({"image": path})["image"]
        except (BadImageError, RuntimeError, OSError) as exc:
            logger.warning("audit: skipped %s: %s", path, exc)
            skipped.append(path)
            continue
        x = (x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)).float()
        region = lung_region(path, grey, use_masks)
        sources[region.source] += 1
        if region.problem:
            rejected[region.problem.split(":")[0]] += 1
        tensors.append(x)
        masks.append(np.clip(image_to_input(region.mask, model.preprocessing, x.shape[-2:]), 0, 1))
        labels.append(label)
        names.append(path)
    if not tensors:
        raise AuditError("no image of the audited part could be read")
    return torch.stack(tensors), np.stack(masks), labels, names, sources, rejected, skipped


def audit_run(run_dir: str | os.PathLike, *, dataset_dir: str | None = None, max_images: int | None = 200,
              use_masks: bool = True, seed: int = 0, device: str = "auto", batch_size: int = 16,
              progress: bool = True) -> AuditResult:
    """Run the shortcut probes on a run folder's test images and write ``<run>/audit/``.

    Args:
        run_dir: a finished run folder.
        dataset_dir: where the dataset is now (default: the root in ``split.json``).
        max_images: audit at most this many images (class-stratified, seeded); ``None``: all.
        use_masks: use the collection's lung masks when it ships them (else always the prior).
        seed: image subset and donor shuffle seed.
        device: ``auto``, ``cpu``, ``cuda``...
        batch_size: images per forward pass.
        progress: progress bars.

    Returns:
        The :class:`AuditResult` (``audit.json`` written).

    Raises:
        AuditError: no model, no split, moved dataset, nothing readable.
        cxrkit.serve.ModelLoadError: the run folder's model cannot be loaded, or its ``split.json`` or
            ``calibration.json`` is not valid.
        cxrkit.runfolder.RunFolderError: ``split.json`` does not fit ``dataset_dir``.
    """
    from tqdm.auto import tqdm

    from cxrkit.audit import figures
    from cxrkit.audit.evidence import MIN_GRID, cam_layer, compute_cams, evidence_verdict, lung_shares
    from cxrkit.audit.lungs import PRIOR_ELLIPSES
    from cxrkit.audit.occlusion import (
        DIRECTION_GAP,
        KEEP_DROP,
        MIN_BASELINE,
        example_indices,
        occlusion_verdict,
        run_occlusion,
    )
    from cxrkit.atomic import atomic_write_json
    from cxrkit.engine.writers import relative_paths
    from cxrkit.serve.model import load_model

    started = time.perf_counter()
    run_dir = Path(run_dir).expanduser().resolve()
    model = load_model(run_dir, device=device)
    if not model.supports_cam:
        raise AuditError(f"{run_dir}: the audit needs the PyTorch model (models/model.pt) for Grad-CAM")
    all_items, part, root, note = _audit_items(run_dir, list(model.classes), dataset_dir)
    items = _stratified(all_items, max_images, seed)
    images, masks, labels, paths, sources, rejected, skipped = _prepare(model, items, use_masks, progress)
    names = relative_paths(paths, root)
    out = run_dir / AUDIT_DIR

    def predict(x: torch.Tensor) -> np.ndarray:
        return model.probabilities(x).numpy().argmax(1)

    steps = len(images) * 5 + len(images)
    with tqdm(total=steps, desc="audit: probing", unit="img", disable=bar_disable(progress), leave=False) as bar:
        conditions, examples, base_pred = run_occlusion(predict, images, torch.as_tensor(masks), labels,
                                                        model.classes, seed=seed, batch_size=batch_size,
                                                        progress=bar.update)
        layer, grid = cam_layer(model.network, tuple(images.shape[1:]))
        cams = compute_cams(model.network, images.to(model.device), base_pred, layer,
                            batch_size=max(1, batch_size // 2), progress=bar.update)
    shares = lung_shares(cams, masks)
    area_share = float(np.mean(masks))
    occ = occlusion_verdict(conditions)
    occ_blur = occlusion_verdict(conditions, fill="blur")
    baseline = conditions[0].balanced_accuracy
    ev = evidence_verdict(shares, area_share, near_chance=not baseline >= MIN_BASELINE)
    titles = [Path(n).name for n in names]
    picked = example_indices(labels)
    figs = {
        "occlusion": figures.occlusion_figure(conditions, model.classes, out / "occlusion.png").name,
        "occlusion_examples": figures.examples_figure(
            images[picked], masks[picked], examples, [f"{titles[i]} ({model.classes[labels[i]]})" for i in picked],
            out / "occlusion_examples.png").name,
        "cam_energy": figures.energy_figure(shares, area_share, out / "cam_energy.png").name,
        "cam_least_inside": figures.least_inside_figure(images, cams, masks, shares, titles,
                                                        out / "cam_least_inside.png").name,
    }
    order = np.argsort(np.nan_to_num(shares, nan=2.0))
    data = {
        "format": AUDIT_FORMAT,
        "run": run_dir.name,
        "part": part,
        "part_note": note,
        "n_images": len(images),
        "n_available": len(all_items),
        "skipped_images": relative_paths(skipped, root),
        "classes": list(model.classes),
        "lung_region": {
            "source_counts": dict(sources),
            "masks_rejected": dict(rejected),
            "prior_ellipses": [list(e) for e in PRIOR_ELLIPSES],
            "text": _region_text(sources, rejected),
        },
        "occlusion": {
            "conditions": [c.to_dict() for c in conditions],
            "verdict": {"flag": occ.flag, "inconclusive": occ.inconclusive, "text": occ.text},
            "blur_check": {"flag": occ_blur.flag, "inconclusive": occ_blur.inconclusive, "text": occ_blur.text},
            "thresholds": {"min_baseline": MIN_BASELINE, "keep_drop": KEEP_DROP, "direction_gap": DIRECTION_GAP},
        },
        "evidence": {
            "layer": layer,
            "grid": list(grid),
            "min_grid": MIN_GRID,
            "area_share": area_share,
            "median_share": ev.median_share,
            "share_below_area": float(np.mean(shares[np.isfinite(shares)] < area_share)) if np.isfinite(shares).any()
            else None,
            "verdict": {"flag": ev.flag, "text": ev.text},
            "least_inside": [{"image": names[i], "share": float(shares[i])} for i in order[:8]],
            "per_image": {names[i]: float(shares[i]) for i in range(len(names))},
        },
        "shortcut_suspected": bool(occ.flag or ev.flag),
        "figures": figs,
        "settings": {"max_images": max_images, "use_masks": use_masks, "seed": seed},
        "seconds": round(time.perf_counter() - started, 1),
    }
    data["summary"] = _summary(data)
    path = atomic_write_json(out / "audit.json", data)
    logger.info("audit of %s: %s", run_dir.name, data["summary"])
    return AuditResult(data, path)


def _region_text(sources: Counter, rejected: Counter) -> str:
    total = sum(sources.values())
    used = sources.get("mask", 0)
    if used == total:
        return f"the collection's own lung masks (all {total} images)"
    text = (f"the collection's own lung masks for {used} of {total} images, the anatomical prior (two fixed "
            f"ellipses of a frontal chest film) for the other {total - used}" if used else
            "the anatomical prior (two fixed ellipses of a frontal chest film): the collection ships no lung masks")
    if rejected:
        text += "; masks not used: " + "; ".join(f"{reason} ({n})" for reason, n in rejected.items())
    return text


def _summary(data: dict[str, Any]) -> str:
    verdict = "SHORTCUT SUSPECTED" if data["shortcut_suspected"] else "no shortcut found"
    return (f"{verdict}: occlusion - {data['occlusion']['verdict']['text']} Grad-CAM - "
            f"{data['evidence']['verdict']['text']}")
