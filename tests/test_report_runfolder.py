"""Run folders as the training engine writes them (fabricated by ``support.runfolders``), and the reader's
errors on bad ones."""

from __future__ import annotations

import json
import logging

import pytest
from support.runfolders import CLASSES_2, CLASSES_3, make_run_folder

from cxrkit.report.runfolder import RunFolderError, load_run, resolve_positive
from support.runfolders import CLASSES_2, CLASSES_3, make_run_folder, split_manifest


def test_load_run_reads_the_contract(tmp_path):
    run = load_run(make_run_folder(tmp_path, plugin="chexpert", classes=CLASSES_3, n_val=30, fold=2))
    assert run.classes == CLASSES_3 and run.plugin == "chexpert" and run.fold == 2
    assert run.y_prob.shape == (30, 3) and run.y_true.shape == (30,)
    assert run.dataset == "radiography" and run.missing == ()
    assert run.sha256_short and len(run.sha256_short) == 12
    assert [r["epoch"] for r in run.epochs] == list(range(1, 13))


def test_missing_required_files_name_the_file(tmp_path):
    run = make_run_folder(tmp_path)
    (run / "predictions.csv").unlink()
    with pytest.raises(RunFolderError, match=r"predictions\.csv: file not found"):
        load_run(run)
    with pytest.raises(RunFolderError, match="not a directory"):
        load_run(tmp_path / "nope")


def test_corrupt_json_is_an_error_naming_the_file(tmp_path):
    run = make_run_folder(tmp_path)
    (run / "summary.json").write_text('{"counts": ')
    with pytest.raises(RunFolderError, match=r"summary\.json: not valid JSON"):
        load_run(run)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(classes=["COVID"]), "at least two class names"),
        (lambda r: r.update(epochs=[]), "non-empty list"),
        (lambda r: r.update(positive_class="Cancer"), "positive_class 'Cancer'"),
        (lambda r: r.update(best_epoch="seven"), "best_epoch must be an epoch number"),
    ],
)
def test_bad_metrics_json(tmp_path, edit, message):
    run = make_run_folder(tmp_path)
    data = json.loads((run / "metrics.json").read_text())
    edit(data)
    (run / "metrics.json").write_text(json.dumps(data))
    with pytest.raises(RunFolderError, match=message):
        load_run(run)


def test_bad_predictions_csv(tmp_path):
    run = make_run_folder(tmp_path, n_val=10)
    path = run / "predictions.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0].replace(",prob_1", "")] + lines[1:]) + "\n")
    with pytest.raises(RunFolderError, match="missing column.*prob_1"):
        load_run(run)
    path.write_text("\n".join([lines[0], "a.png,0,0,3.5,-2.0"] + lines[2:]) + "\n")
    with pytest.raises(RunFolderError, match="line 2: probabilities must be"):
        load_run(run)
    path.write_text("\n".join([lines[0], "a.png,0,0,0.7,0.7"] + lines[2:]) + "\n")
    with pytest.raises(RunFolderError, match="line 2: prob_\\* sum to 1.4000.*softmax"):
        load_run(run)
    path.write_text("\n".join([lines[0], "a.png,5,0,0.5,0.5"] + lines[2:]) + "\n")
    with pytest.raises(RunFolderError, match="line 2: label=5 is outside 0..1"):
        load_run(run)


def test_bad_fold_in_split_manifest(tmp_path):
    run = make_run_folder(tmp_path, split={**split_manifest(CLASSES_2, 120), "fold": "first"})
    with pytest.raises(RunFolderError, match=r"split\.json: fold: must be a fold number or null, got 'first'"):
        load_run(run)


def test_missing_optional_files_are_logged_not_fatal(tmp_path, caplog):
    run = make_run_folder(tmp_path)
    (run / "weights.json").unlink()
    with caplog.at_level(logging.WARNING, logger="cxrkit.report.runfolder"):
        loaded = load_run(run)
    assert "weights.json" in loaded.missing and loaded.plugin == run.name
    assert any("weights.json: not found" in r.getMessage() for r in caplog.records)


def test_resolve_positive():
    assert resolve_positive(CLASSES_2, None) == 0
    assert resolve_positive(CLASSES_2, None, "Normal") == 1
    assert resolve_positive(CLASSES_2, "normal") == 1
    assert resolve_positive(CLASSES_3, "2") == 2
    assert resolve_positive(CLASSES_3, None) is None
    with pytest.raises(ValueError, match="'Cancer' is not one of"):
        resolve_positive(CLASSES_3, "Cancer")
