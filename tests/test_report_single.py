"""``cxrkit report``: files, figures and every number in the report against scikit-learn."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from cxrkit.cli import main
from cxrkit.report.report import write_report
from cxrkit.report.runfolder import RunFolderError
from support.runfolders import CLASSES_3, assert_png, make_run_folder, md_tables, read_predictions

FIGURES = ("roc.png", "confusion_matrix.png", "curves.png", "reliability.png")


def ci_cell(text: str) -> tuple[float, float]:
    low, high = re.fullmatch(r"([\d.]+) – ([\d.]+)", text).groups()
    return float(low), float(high)


def cells(values: list[str]) -> list[float]:
    return [float("nan") if v == "n/a" else float(v) for v in values]


def check_table5(rows: list[list[str]], y: np.ndarray, pred: np.ndarray, classes: list[str]) -> None:
    labels = list(range(len(classes)))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    assert rows[0] == ["Class", "Precision", "Sensitivity", "F1", "Support"]
    for k, cls in enumerate(classes):
        assert rows[1 + k][0] == cls
        assert cells(rows[1 + k][1:4]) == pytest.approx([p[k], r[k], f[k]], abs=5e-5, nan_ok=True)
        assert int(rows[1 + k][4]) == s[k]
    acc_row = rows[1 + len(classes)]
    assert acc_row[0] == "accuracy" and float(acc_row[3]) == pytest.approx(accuracy_score(y, pred), abs=5e-5)
    for row, avg in zip(rows[-2:], ("macro", "weighted")):
        ap, ar, af, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=np.nan)
        assert row[0] == f"{avg} avg"
        assert cells(row[1:4]) == pytest.approx([ap, ar, af], abs=5e-5, nan_ok=True)


def test_binary_report_numbers_equal_sklearn(tmp_path):
    run = make_run_folder(tmp_path, plugin="inat2021_mini_swav", n_val=160, skill=2.0, epochs=8)
    md_path = write_report(run, bootstrap=300, seed=1)
    out = run / "report"
    assert md_path == out / "report.md" and (out / "report.html").is_file()
    for name in FIGURES:
        assert_png(out / name)
    text = md_path.read_text()
    tables = md_tables(text)
    y, prob = read_predictions(run)
    pred = prob.argmax(1)

    check_table5(tables["Per-class scores (Table 5 layout, validation images)"][0], y, pred, ["COVID", "Normal"])

    headline = {row[0]: row[1:] for row in tables["Headline metrics (validation images)"][0][1:]}
    expected = {
        "Accuracy": accuracy_score(y, pred),
        "F1 (macro avg)": precision_recall_fscore_support(y, pred, average="macro", zero_division=0)[2],
        "Sensitivity (COVID)": recall_score(y == 0, pred == 0),
        "Specificity (COVID)": recall_score(y != 0, pred != 0),
        "ROC AUC (COVID)": roc_auc_score(y == 0, prob[:, 0]),
    }
    for label, value in expected.items():
        # 4 decimals; a value exactly half-way (an AUC of 0.98375) may round either way: cxrkit's Mann-Whitney
        # AUC is the correctly rounded ratio, scikit-learn's trapezoid sum lands a few ulps below it
        assert float(headline[label][0]) == pytest.approx(value, abs=5e-5 + 1e-12), label
        low, high = ci_cell(headline[label][1])
        assert low <= float(headline[label][0]) <= high, label
    assert "300 resamples" in text and "seed 1" in text and "No resample was skipped" in text

    cm = [[int(v) for v in row[1:-1]] for row in tables["Confusion matrix (validation images)"][0][1:]]
    assert cm == confusion_matrix(y, pred).tolist()

    epochs = json.loads((run / "metrics.json").read_text())["epochs"]
    table6 = {row[0]: row[1:] for row in tables["Accuracy over the epochs (Table 6 layout, training and validation parts)"][0][1:]}
    val = np.array([e["val_accuracy"] for e in epochs])
    assert float(table6["Validation"][0]) == pytest.approx(val.max(), abs=5e-5)
    assert int(table6["Validation"][1]) == epochs[int(val.argmax())]["epoch"]
    assert float(table6["Validation"][2]) == pytest.approx(val.min(), abs=5e-5)
    assert int(table6["Validation"][3]) == epochs[int(val.argmin())]["epoch"]
    assert float(table6["Validation"][4]) == pytest.approx(val.mean(), abs=5e-5)
    train = np.array([e["train_accuracy"] for e in epochs])
    assert float(table6["Training"][0]) == pytest.approx(train.max(), abs=5e-5)

    identity = {row[0]: row[1] for row in tables["Run"][0][1:]}
    assert identity["Weight source (plugin)"] == "inat2021_mini_swav"
    assert identity["Dataset"] == "radiography" and identity["Positive class"] == "COVID"
    sha = json.loads((run / "weights.json").read_text())["sha256"]
    assert sha[:12] in identity["Pretrained weights"]
    counts = {row[0]: row[1:] for row in tables["Data"][0][1:]}
    assert counts["val"] == ["80", "80", "160"]
    assert "Skipped bad images: **2**" in text and "truncated PNG" in text


def test_html_is_self_contained(tmp_path):
    run = make_run_folder(tmp_path, n_val=40, epochs=4)
    write_report(run, tmp_path / "out", bootstrap=50)
    html = (tmp_path / "out" / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(FIGURES)
    assert all(base64.b64decode(b)[:4] == b"\x89PNG" for b in images)
    assert not re.search(r'(src|href)="(?!data:)', html) and "://" not in html  # nothing fetched when viewed
    assert "<table>" in html and "ROC AUC (COVID)" in html


def test_multiclass_report_one_vs_rest(tmp_path):
    run = make_run_folder(tmp_path, plugin="chexpert", classes=CLASSES_3, n_val=90, skill=1.5, positive_class=None)
    text = write_report(run, bootstrap=200).read_text()
    tables = md_tables(text)
    y, prob = read_predictions(run)
    pred = prob.argmax(1)
    check_table5(tables["Per-class scores (Table 5 layout, validation images)"][0], y, pred, CLASSES_3)
    headline = {row[0]: row[1] for row in tables["Headline metrics (validation images)"][0][1:]}
    assert float(headline["ROC AUC (macro, one-vs-rest)"]) == pytest.approx(
        roc_auc_score(y, prob, multi_class="ovr"), abs=5e-5)
    for k, cls in enumerate(CLASSES_3):
        assert float(headline[f"Sensitivity ({cls})"]) == pytest.approx(recall_score(y == k, pred == k), abs=5e-5)
        assert float(headline[f"Specificity ({cls})"]) == pytest.approx(recall_score(y != k, pred != k), abs=5e-5)
    ovr = {row[0]: row for row in tables["Sensitivity, specificity and ROC AUC per class (one-vs-rest, validation images)"][0][1:]}
    assert float(ovr["Viral Pneumonia"][3]) == pytest.approx(roc_auc_score(y == 2, prob[:, 2]), abs=5e-5)


def test_empty_class_and_single_class_reports(tmp_path):
    # 3 classes, class 2 never in the validation set nor predicted: its metrics n/a, a warning box, no crash
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    prob = np.array([[.7, .2, .1], [.6, .3, .1], [.2, .7, .1], [.1, .8, .1], [.3, .6, .1], [.6, .3, .1],
                     [.8, .1, .1], [.2, .7, .1]])
    run = make_run_folder(tmp_path / "a", classes=CLASSES_3, y_true=y, y_prob=prob, positive_class=None)
    text = write_report(run, bootstrap=100).read_text()
    assert "> **Warning:** class(es) Viral Pneumonia have no validation image" in text
    tables = md_tables(text)
    check_table5(tables["Per-class scores (Table 5 layout, validation images)"][0], y, prob.argmax(1), CLASSES_3)
    headline = {row[0]: row[1:] for row in tables["Headline metrics (validation images)"][0][1:]}
    macro_auc = np.mean([roc_auc_score(y == k, prob[:, k]) for k in (0, 1)])  # over the classes with an AUC
    assert float(headline["ROC AUC (macro, one-vs-rest)"][0]) == pytest.approx(macro_auc, abs=5e-5)
    assert headline["Sensitivity (Viral Pneumonia)"] == ["n/a", "n/a"]

    # only COVID images in the validation set: AUC undefined -> n/a, every resample skipped and counted
    single = make_run_folder(tmp_path / "b", y_true=np.zeros(6, dtype=int),
                             y_prob=np.array([[.9, .1], [.8, .2], [.3, .7], [.6, .4], [.7, .3], [.55, .45]]))
    text = write_report(single, bootstrap=100).read_text()
    headline = {row[0]: row[1:] for row in md_tables(text)["Headline metrics (validation images)"][0][1:]}
    assert headline["ROC AUC (COVID)"] == ["n/a", "n/a"]
    assert float(headline["Sensitivity (COVID)"][0]) == pytest.approx(5 / 6, abs=5e-5)
    assert "ROC AUC (COVID) 100 of 100" in text
    assert_png(single / "report" / "roc.png")


def test_positive_override_and_bootstrap_off(tmp_path):
    run = make_run_folder(tmp_path, n_val=40, epochs=3)
    text = write_report(run, bootstrap=0, positive="normal").read_text()
    headline = {row[0]: row[1:] for row in md_tables(text)["Headline metrics (validation images)"][0][1:]}
    assert "Sensitivity (Normal)" in headline and headline["Accuracy"][1] == "not computed"
    with pytest.raises(ValueError, match="'Cancer' is not one of"):
        write_report(run, positive="Cancer", bootstrap=0)


def test_no_identifiers_from_the_audit_reach_the_report(tmp_path):
    run = make_run_folder(tmp_path, n_val=20, epochs=2)
    summary = json.loads((run / "summary.json").read_text())
    summary["leakage"] = {"groups_in_both": 2, "overlapping_groups": ["patient00042", "patient31337"],
                          "details": {"ids": ["patient00042"], "passed": False}}
    (run / "summary.json").write_text(json.dumps(summary))
    write_report(run, bootstrap=0)
    for name in ("report.md", "report.html"):
        text = (run / "report" / name).read_text()
        assert "patient00042" not in text and "patient31337" not in text
        assert "overlapping_groups: 2 item(s)" in text and "details.passed: no" in text


def test_unfinished_run_is_flagged(tmp_path):
    run = make_run_folder(tmp_path, n_val=20, epochs=2)
    summary = json.loads((run / "summary.json").read_text())
    summary["status"] = "failed"
    (run / "summary.json").write_text(json.dumps(summary))
    text = write_report(run, bootstrap=0).read_text()
    assert "> **Warning:** run `" in text and "has status 'failed'" in text
    assert {r[0]: r[1] for r in md_tables(text)["Run"][0]}["Status"] == "failed"


def test_cli_report(tmp_path, capsys):
    run = make_run_folder(tmp_path, n_val=30, epochs=3)
    assert main(["report", str(run), "--bootstrap", "50", "--seed", "3"]) == 0
    assert f"wrote {run / 'report' / 'report.md'}" in capsys.readouterr().out
    assert main(["report", str(run), "--out", str(tmp_path / "r"), "--bootstrap", "0"]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    assert main(["report", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
    (run / "metrics.json").write_text("{")
    assert main(["report", str(run)]) == 1
    assert "metrics.json: not valid JSON" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--bootstrap", "-1"]) == 1


def test_corrupt_run_folder_raises_named_error(tmp_path):
    run = make_run_folder(tmp_path, n_val=10, epochs=2)
    (run / "predictions.csv").write_text("image,label\n")
    with pytest.raises(RunFolderError, match=r"predictions\.csv: missing column"):
        write_report(run)
