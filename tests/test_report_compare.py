"""The comparison report: ranking, Table 5/6 across sources, skipped sources, split checks, k-fold groups."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, recall_score, roc_auc_score

from cxrkit.cli import main
from cxrkit.report.compare import SplitMismatchWarning, write_comparison
from support.runfolders import (
    CLASSES_2,
    CLASSES_3,
    assert_png,
    make_run_folder,
    md_tables,
    read_predictions,
    split_manifest,
)


def value(cell: str) -> float:
    """The point estimate of a ``0.9833 (0.9667 – 0.9967)`` cell."""
    return float(cell.split()[0])


def interval(cell: str) -> tuple[float, float]:
    low, high = re.search(r"\(([\d.]+) – ([\d.]+)\)", cell).groups()
    return float(low), float(high)


def two_class_case(errors_covid: int, errors_normal: int, n: int = 10):
    """``n`` COVID then ``n`` Normal images with the given number of mistakes per class."""
    y = np.array([0] * n + [1] * n)
    pred = y.copy()
    pred[:errors_covid] = 1
    pred[n:n + errors_normal] = 0
    prob = np.where(pred[:, None] == np.arange(2), 0.8, 0.2)
    prob[:, 0] += np.linspace(0, 0.01, 2 * n)  # distinct scores
    prob /= prob.sum(1, keepdims=True)
    return y, prob


@pytest.fixture
def study(tmp_path):
    """Three sources on one split: different skill, plus two tied on accuracy that differ in macro F1."""
    root = tmp_path / "runs"
    runs = {}
    for seed, (plugin, errors) in enumerate({"imagenet": (3, 3), "chexpert": (0, 1), "moco_v2": (4, 0),
                                             "moco_v1": (2, 2)}.items()):
        y, prob = two_class_case(*errors)
        runs[plugin] = make_run_folder(root, plugin=plugin, y_true=y, y_prob=prob, seed=seed, epochs=6)
    return runs


def test_ranking_tables_and_skipped(study, tmp_path):
    skipped = {"swav": "weight file absent; run `cxrkit weights import swav /path/to/swav_800ep_pretrain.pth.tar`"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitMismatchWarning)  # identical splits: no warning
        md = write_comparison(list(study.values()), tmp_path / "cmp", bootstrap=200, skipped=skipped)
    text = md.read_text()
    tables = md_tables(text)
    ranking = tables["Ranking (validation images)"][0]
    header = ranking[0]
    order = [row[1] for row in ranking[1:]]
    # accuracy: chexpert .95 > moco_v1 .80 = moco_v2 .80 > imagenet .70; moco_v1's macro F1 (.80) beats moco_v2's (.79)
    assert order == ["chexpert", "moco_v1", "moco_v2", "imagenet"]
    for row in ranking[1:]:
        y, prob = read_predictions(study[row[1]])
        pred = prob.argmax(1)
        cells = dict(zip(header, row))
        assert value(cells["Accuracy"]) == pytest.approx(accuracy_score(y, pred), abs=5e-5)
        f1 = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)[2]
        assert value(cells["F1 (macro avg)"]) == pytest.approx(f1, abs=5e-5)
        assert value(cells["Sensitivity (COVID)"]) == pytest.approx(recall_score(y == 0, pred == 0), abs=5e-5)
        assert value(cells["ROC AUC (COVID)"]) == pytest.approx(roc_auc_score(y == 0, prob[:, 0]), abs=5e-5)
        low, high = interval(cells["Accuracy"])
        assert low <= value(cells["Accuracy"]) <= high

    table5 = tables["Per-class scores (Table 5 layout, validation images)"][0]
    assert [r[1] for r in table5[1:] if r[1]] == order
    blocks = {table5[i][1]: table5[i:i + 2] for i in range(1, len(table5), 2)}
    for plugin, rows in blocks.items():
        y, prob = read_predictions(study[plugin])
        p, r, f, s = precision_recall_fscore_support(y, prob.argmax(1), labels=[0, 1], zero_division=0)
        for k, row in enumerate(rows):
            assert row[2] == ["COVID", "Normal"][k]
            assert [float(v) for v in row[3:6]] == pytest.approx([p[k], r[k], f[k]], abs=5e-5)
            assert int(row[6]) == s[k]

    table6 = tables["Accuracy over the epochs (Table 6 layout, training and validation parts)"][0]
    assert [r[0] for r in table6[1:] if r[0]] == order and len(table6) == 1 + 2 * len(order)
    epochs = json.loads((study["chexpert"] / "metrics.json").read_text())["epochs"]
    assert float(table6[2][2]) == pytest.approx(max(e["val_accuracy"] for e in epochs), abs=5e-5)

    assert "- **swav**: weight file absent; run `cxrkit weights import swav" in text
    assert "split mismatch" not in text and "did not finish" not in text
    assert "> **Warning:** not every run has a held-out test part" in text  # these runs predate test parts
    for name in ("curves.png", "confusion_matrices.png"):
        assert_png(tmp_path / "cmp" / name)
    html = (tmp_path / "cmp" / "comparison.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<code>cxrkit weights import swav" in html


def test_mismatched_split_manifests_warn_loudly(tmp_path, caplog):
    a = make_run_folder(tmp_path, plugin="imagenet", n_val=30, epochs=3, seed=1)
    b = make_run_folder(tmp_path, plugin="chexpert", n_val=30, epochs=3, seed=2)
    manifest = json.loads((b / "split.json").read_text())
    manifest["seed"] = 42
    manifest["val"] = manifest["val"][1:] + manifest["train"][:1]
    (b / "split.json").write_text(json.dumps(manifest))
    with pytest.warns(SplitMismatchWarning, match="split manifests differ"):
        md = write_comparison([a, b], tmp_path / "cmp", bootstrap=0)
    assert "> **Warning:** split mismatch: split manifests differ" in md.read_text()
    assert any("split mismatch" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_different_validation_images_warn(tmp_path):
    a = make_run_folder(tmp_path, plugin="imagenet", n_val=20, epochs=2, seed=1)
    b = make_run_folder(tmp_path, plugin="chexpert", n_val=20, epochs=2, seed=2)
    lines = (b / "predictions.csv").read_text().splitlines()
    lines[1] = lines[1].replace("img-0.png", "img-999.png")
    (b / "predictions.csv").write_text("\n".join(lines) + "\n")
    with pytest.warns(SplitMismatchWarning, match="validation images in predictions.csv differ"):
        write_comparison([a, b], tmp_path / "cmp", bootstrap=0)


def test_kfold_group_mean_std_and_pooled(tmp_path):
    folds = [make_run_folder(tmp_path / "cv", plugin="chestxray14", classes=CLASSES_3, n_val=45, skill=1.2,
                             seed=10 + f, fold=f, epochs=5, positive_class=None) for f in range(3)]
    other = [make_run_folder(tmp_path / "cv2", plugin="imagenet", classes=CLASSES_3, n_val=45, skill=0.3,
                             seed=20 + f, fold=f, epochs=5, positive_class=None) for f in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", SplitMismatchWarning)  # fold f of both plugins share a manifest
        md = write_comparison(folds + other, tmp_path / "cmp", bootstrap=100)
    tables = md_tables(md.read_text())
    ranking = tables["Ranking (validation images)"][0]
    assert [r[1] for r in ranking[1:]] == ["chestxray14", "imagenet"] and ranking[1][2] == "3"
    fold_table = tables["chestxray14"][0]
    header = fold_table[0]
    assert header[:3] == ["Fold", "Run", "Accuracy"]
    accs, aucs = [], []
    for f, run in enumerate(folds):
        y, prob = read_predictions(run)
        row = dict(zip(header, fold_table[1 + f]))
        assert row["Fold"] == str(f)
        accs.append(accuracy_score(y, prob.argmax(1)))
        aucs.append(roc_auc_score(y, prob, multi_class="ovr"))
        assert float(row["Accuracy"]) == pytest.approx(accs[-1], abs=5e-5)
        assert float(row["ROC AUC (macro, one-vs-rest)"]) == pytest.approx(aucs[-1], abs=5e-5)
    stats = dict(zip(header, fold_table[4]))
    assert stats["Fold"] == "mean ± std"
    mean, std = (float(v) for v in stats["Accuracy"].split(" ± "))
    assert mean == pytest.approx(np.mean(accs), abs=5e-5) and std == pytest.approx(np.std(accs, ddof=1), abs=5e-5)
    mean, std = (float(v) for v in stats["ROC AUC (macro, one-vs-rest)"].split(" ± "))
    assert mean == pytest.approx(np.mean(aucs), abs=5e-5) and std == pytest.approx(np.std(aucs, ddof=1), abs=5e-5)
    pooled = [read_predictions(r) for r in folds]
    y = np.concatenate([p[0] for p in pooled])
    prob = np.concatenate([p[1] for p in pooled])
    pooled_acc = accuracy_score(y, prob.argmax(1))
    assert float(dict(zip(header, fold_table[5]))["Accuracy"]) == pytest.approx(pooled_acc, abs=5e-5)
    assert value(dict(zip(ranking[0], ranking[1]))["Accuracy"]) == pytest.approx(pooled_acc, abs=5e-5)
    assert int(dict(zip(ranking[0], ranking[1]))["Images"]) == 135


def test_repeated_runs_of_one_plugin_stay_separate(tmp_path):
    runs = [make_run_folder(tmp_path, plugin="imagenet", n_val=20, epochs=2, seed=s,
                            split={**split_manifest(CLASSES_2, 20), "dataset": "x"}) for s in (1, 2)]
    md = write_comparison(runs, tmp_path / "cmp", bootstrap=0)
    labels = [r[1] for r in md_tables(md.read_text())["Ranking (validation images)"][0][1:]]
    assert sorted(labels) == sorted(f"imagenet ({r.name})" for r in runs)


def test_mixed_classes_are_refused(tmp_path):
    a = make_run_folder(tmp_path, plugin="a", n_val=12, epochs=2)
    b = make_run_folder(tmp_path, plugin="b", classes=CLASSES_3, n_val=12, epochs=2)
    with pytest.raises(ValueError, match="a comparison needs runs trained on the same classes"):
        write_comparison([a, b], tmp_path / "cmp")
    with pytest.raises(ValueError, match="at least one run folder"):
        write_comparison([], tmp_path / "cmp")


def test_cli_compare_report(study, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["compare-report", *map(str, study.values()), "--out", str(out), "--bootstrap", "50",
            "--skipped", "swav=weight file absent", "--skipped", "chexnet=DenseNet121, not a ResNet50"]
    assert main(argv) == 0
    assert f"wrote {out / 'comparison.md'}" in capsys.readouterr().out
    text = (out / "comparison.md").read_text()
    assert "- **chexnet**: DenseNet121, not a ResNet50" in text and "- **swav**: weight file absent" in text
    with pytest.raises(SystemExit):
        main(["compare-report", str(study["imagenet"]), "--out", str(out), "--skipped", "no-reason"])
    assert main(["compare-report", str(tmp_path / "nope"), "--out", str(out)]) == 1
    assert "not a directory" in capsys.readouterr().err
