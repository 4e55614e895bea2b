"""Fabricated run folders (the run-folder contract, no training) and readers of the reports written from them."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np

__all__ = ["CLASSES_2", "CLASSES_3", "split_manifest", "make_run_folder", "copy_run", "md_tables",
           "read_predictions", "assert_png"]

CLASSES_2 = ["COVID", "Normal"]
CLASSES_3 = ["COVID", "Normal", "Viral Pneumonia"]


def split_manifest(classes: list[str], n_val: int, *, fold: int | None = None, seed: int = 0) -> dict:
    """A split manifest like the engine's (``cxrkit-split/1``): dataset, root, seed, fold and the entries."""
    rng = np.random.default_rng(1000 + (fold or 0))
    val = [{"image": f"{classes[i % len(classes)]}/img-{(fold or 0) * 1000 + i}.png", "label": i % len(classes),
            "size": None} for i in range(n_val)]
    train = [{"image": f"{classes[i % len(classes)]}/img-{5000 + i}.png", "label": i % len(classes), "size": None}
             for i in range(4 * n_val)]
    rng.shuffle(train)
    return {"format": "cxrkit-split/1", "dataset": "radiography", "root": "/data/radiography",
            "classes": list(classes), "seed": seed, "fold": fold, "folds": 5 if fold is not None else None,
            "train": train, "val": val, "test": []}


def make_run_folder(
    root: Path,
    *,
    plugin: str = "imagenet",
    classes: list[str] | None = None,
    n_val: int = 120,
    skill: float = 2.5,
    seed: int = 0,
    epochs: int = 12,
    fold: int | None = None,
    positive_class: str | None = "COVID",
    y_true: np.ndarray | None = None,
    y_prob: np.ndarray | None = None,
    split: dict | None = None,
) -> Path:
    """Write a complete run folder per the run-folder contract with realistic values.

    Predictions come from softmax(noise + ``skill`` on the true class) unless
    ``y_true`` / ``y_prob`` are given; the curves rise (accuracy) and fall
    (loss) with noise, validation a little below training.
    """
    classes = list(classes or CLASSES_2)
    rng = np.random.default_rng(seed)
    run = root / f"{plugin}-20240101-{120000 + seed:06d}"
    (run / "configs").mkdir(parents=True)
    (run / "models").mkdir()
    (run / "tensorboard").mkdir()
    if y_true is None:
        y_true = np.arange(n_val) % len(classes)
        logits = rng.normal(size=(n_val, len(classes)))
        logits[np.arange(n_val), y_true] += skill
        y_prob = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob, dtype=float)
    with (run / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "pred", *(f"prob_{k}" for k in range(len(classes)))])
        for i, (t, p) in enumerate(zip(y_true, y_prob)):
            w.writerow([f"{classes[t]}/img-{(fold or 0) * 1000 + i}.png", int(t), int(np.argmax(p)),
                        *(repr(float(v)) for v in p)])
    rows = []
    final = float((y_prob.argmax(1) == y_true).mean())
    for e in range(1, epochs + 1):
        progress = 1 - np.exp(-e / 3)
        row = {
            "epoch": e,
            "train_loss": float(0.7 * (1 - progress) + 0.05 + rng.normal(0, 0.01)),
            "train_accuracy": float(min(0.999, 0.6 + (final + 0.02 - 0.6) * progress + rng.normal(0, 0.005))),
            "val_loss": float(0.75 * (1 - progress) + 0.1 + rng.normal(0, 0.02)),
            "val_accuracy": float(min(0.999, 0.55 + (final - 0.55) * progress + rng.normal(0, 0.01))),
            "val_auc": float(min(0.999, 0.7 + 0.28 * progress)),
            "lr": 1e-3,
            "time_s": 61.5,
        }
        for c in classes:
            for name in ("precision", "sensitivity", "specificity", "f1"):
                row[f"val_{name}/{c}"] = float(min(1.0, 0.6 + 0.35 * progress))
        rows.append(row)
    best = max(rows, key=lambda r: r["val_accuracy"])["epoch"]
    metrics = {"classes": classes, "positive_class": positive_class, "best_metric": "val_accuracy",
               "best_epoch": best, "epochs": rows}
    (run / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with (run / "metrics.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    split = split if split is not None else split_manifest(classes, len(y_true), fold=fold)
    (run / "split.json").write_text(json.dumps(split))
    sha = hashlib.sha256(plugin.encode()).hexdigest()
    (run / "weights.json").write_text(json.dumps({
        "plugin": plugin, "architecture": "resnet50", "path": f"/home/u/.cache/cxrkit/weights/{plugin}.pth",
        "sha256": sha, "pretrained": True}))
    counts_val = {c: int((y_true == k).sum()) for k, c in enumerate(classes)}
    (run / "summary.json").write_text(json.dumps({
        "counts": {"train": {c: 4 * n for c, n in counts_val.items()}, "val": counts_val},
        "skipped": {"count": 2, "images": ["COVID/COVID-13.png",
                                           {"image": "Normal/Normal-7.png", "reason": "truncated PNG"}]},
        "leakage": {"group_key": "patient", "groups_in_both": 0, "passed": True, "overlapping_groups": []},
        "wall_time_s": 754.2, "status": "finished", "dataset": "radiography", "excluded": 0}))
    channel_def = {str(k): c for k, c in enumerate(classes)}
    (run / "configs" / "metadata.json").write_text(json.dumps({
        "version": "0.1.0", "task": "Chest X-ray classification: " + " / ".join(classes),
        "network_data_format": {"inputs": {"image": {"type": "image"}},
                                "outputs": {"pred": {"type": "probabilities", "channel_def": channel_def}}}}))
    (run / "configs" / "train.yaml").write_text(f"dataset_name: radiography\nplugin: {plugin}\n")
    (run / "configs" / "inference.yaml").write_text("network_def: {}\n")
    (run / "configs" / "logging.conf").write_text("[loggers]\nkeys=root\n")
    (run / "versions.json").write_text(json.dumps({
        "python": "3.11.9", "torch": "2.14.1", "torchvision": "0.29.1", "monai": "1.6.1", "ignite": "0.5.5",
        "numpy": "2.4.6", "cxrkit": "0.1.0", "device": "cpu"}))
    (run / "models" / "model.pt").write_bytes(b"not used by reports")
    return run


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a run folder to change freely, its large files (models) linked instead of copied."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in sorted(run.rglob("*")):
        target = dest / path.relative_to(run)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.stat().st_size > 1 << 20:
            target.symlink_to(path.resolve())
        else:
            target.write_bytes(path.read_bytes())
    return dest


def md_tables(text: str) -> dict[str, list[list[list[str]]]]:
    """Markdown tables by the heading above them: ``{heading: [table rows including the header]}``."""
    out: dict[str, list[list[list[str]]]] = {}
    heading, current = "", None
    for line in text.splitlines():
        if line.startswith("#"):
            heading, current = line.lstrip("#").strip(), None
        elif line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in line.strip()[1:-1].split(" | ")]
            if set("".join(cells)) <= set(":-|"):
                continue  # the alignment row
            if current is None:
                current = []
                out.setdefault(heading, []).append(current)
            current.append(cells)
        else:
            current = None
    return out


def read_predictions(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_prob)`` straight from predictions.csv, independently of cxrkit's reader."""
    with (run / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    probs = sorted(k for k in rows[0] if k.startswith("prob_"))
    return np.array([int(r["label"]) for r in rows]), np.array([[float(r[k]) for k in probs] for r in rows])


def assert_png(path: Path) -> None:
    """A real, decodable PNG of a sensible size."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 300 and im.height >= 200


# --------------------------------------------------------------------------- reader tests
