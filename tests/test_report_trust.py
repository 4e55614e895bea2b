"""Reports of trained runs: test-split headline, results by split, external validation, calibration, audit."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest

from cxrkit.calibration import apply_temperature, expected_calibration_error
from cxrkit.cli import main
from cxrkit.report.runfolder import load_run
from cxrkit.serve.model import load_model

PNG = b"\x89PNG\r\n\x1a\n"


def _sections(text: str) -> dict[str, str]:
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def _rows(section: str) -> list[list[str]]:
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines if not set(ln) <= set("|:- ")]


@pytest.mark.slow
def test_marker_run_report_from_test_split_with_external_calibration_and_audit(shortcut_runs, shortcut_plugin, tmp_path,
                                                                                capsys):
    run = shutil.copytree(shortcut_runs["marker"], tmp_path / "marker")
    folder = load_run(run)
    assert folder.test is not None and folder.headline.split == "test" and folder.test.n == 16

    # external validation: the same two classes from a collection without the corner marker
    assert main(["external", str(run), "--dataset", "radiography", "--dataset_dir",
                 str(shortcut_runs["data"]["lungs"]), "--class_map", "COVID=COVID,Normal=Normal",
                 "--name", "no-marker", "--device", "cpu", "--bootstrap", "200", "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "external: no-marker" in printed and "test" in printed
    external = json.loads((run / "external" / "no-marker" / "metrics.json").read_text())
    assert external["split"] == "external" and external["class_map"] == {"COVID": "COVID", "Normal": "Normal"}
    assert external["n_images"] == 80
    assert external["metrics"]["accuracy"] <= 0.7  # the shortcut does not travel: near chance elsewhere

    # calibration fitted on validation; predict then serves calibrated probabilities and says so
    assert main(["calibrate", str(run)]) == 0
    assert "fitted on the validation split" in capsys.readouterr().out
    folder = load_run(run)
    assert folder.calibration is not None and folder.calibration.n_images == folder.validation.n
    model = load_model(run, device="cpu")
    assert model.calibration == folder.calibration
    assert main(["predict", str(run), str(shortcut_runs["data"]["marker"] / "COVID" / "images" / "COVID-1.png"),
                 "--json", "--device", "cpu"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["calibrated"] is True and "T = " in answer["calibration"]

    assert main(["report", str(run), "--bootstrap", "200", "--device", "cpu"]) == 0
    capsys.readouterr()
    text = (run / "report" / "report.md").read_text()
    sections = _sections(text)
    assert "Headline split: **test**" in text
    headline = {r[0]: r[1] for r in _rows(sections["Headline metrics (test images)"])[1:]}
    y_true, y_pred = folder.test.y_true, folder.test.y_pred
    assert float(headline["Accuracy"]) == pytest.approx(np.mean(y_true == y_pred), abs=5e-5)
    assert "resamples of the 16 test images" in sections["Headline metrics (test images)"]
    by_split = {r[0]: r for r in _rows(sections["Results by split (internal and external)"])[1:]}
    assert set(by_split) == {"validation", "test", "external: no-marker"}
    assert by_split["validation"][1] == "model selection" and by_split["external: no-marker"][2] == "80"
    assert float(by_split["external: no-marker"][3].split()[0]) == pytest.approx(external["metrics"]["accuracy"],
                                                                                 abs=5e-5)
    for title in ("Per-class scores (Table 5 layout, test images)", "ROC curve (test images)",
                  "Confusion matrix (test images)", "Calibration (test images)"):
        assert title in sections, title
    calibration = _rows(sections["Calibration (test images)"])
    ece = expected_calibration_error(y_true, folder.test.y_prob)
    assert calibration[1][:2] == ["test", "as trained"] and float(calibration[1][3]) == pytest.approx(ece, abs=5e-5)
    scaled = expected_calibration_error(y_true, apply_temperature(folder.test.y_prob, folder.calibration.temperature))
    assert float(calibration[2][3]) == pytest.approx(scaled, abs=5e-5)
    audit = sections["Shortcut audit: is the model looking at the lungs?"]
    assert "**Shortcut suspected.**" in audit and "DeGrave" in audit and "lung masks" in audit
    assert "Near-duplicate images (256-bit perceptual hash" in sections["Data"]
    for name in ("roc.png", "confusion_matrix.png", "reliability.png", "curves.png", "audit_occlusion.png",
                 "audit_cam_energy.png", "audit_cam_least_inside.png", "audit_occlusion_examples.png"):
        assert (run / "report" / name).read_bytes()[:8] == PNG, name
    html = (run / "report" / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 8 and all(base64.b64decode(b)[:8] == PNG for b in images)

    # the comparison report puts internal and external results side by side
    other = shutil.copytree(shortcut_runs["lungs"], tmp_path / "lungs")
    assert main(["compare-report", str(run), str(other), "--out", str(tmp_path / "cmp"), "--bootstrap", "100"]) == 0
    sections = _sections((tmp_path / "cmp" / "comparison.md").read_text())
    side = _rows(sections["Internal and external validation"])
    assert side[0] == ["Source", "validation accuracy", "test accuracy", "external: no-marker accuracy"]
    assert {r[0]: r[3] for r in side[1:]}["shortcut_cnn (lungs)"] == "–"
    assert "Ranking (test images)" in sections


@pytest.mark.slow
def test_run_without_test_part_says_its_headline_is_the_model_selection_split(shortcut_runs, shortcut_plugin, tmp_path):
    run = shutil.copytree(shortcut_runs["lungs"], tmp_path / "lungs")
    shutil.rmtree(run / "test")
    from cxrkit.report.report import write_report

    text = write_report(run, bootstrap=0, audit="false").read_text()
    assert "Headline split: **validation**" in text and "no held-out test part" in text
    assert "## Headline metrics (validation images)" in text and "Shortcut audit: not run (switched off)" in text


def test_near_duplicate_pairs_figure_of_real_copies(tmp_path):
    from support.paths import shared_data

    from cxrkit.report.trust_figures import pairs_figure

    root = shared_data()
    copy = next(shared_data("coronahack").rglob("kjr-21-e24-g003-l-a.jpg")).relative_to(root)
    pair = {"a": "radiography/COVID-19_Radiography_Dataset/COVID/COVID-1221.png", "b": str(copy), "distance": 6,
            "parts": ["train", "test"]}
    figure = pairs_figure([pair], root, tmp_path / "pairs.png")
    assert figure is not None and figure.read_bytes()[:8] == PNG
    assert pairs_figure([{**pair, "a": "gone.png"}], root, tmp_path / "none.png") is None  # dataset moved


def test_external_names_its_folder_safely(tmp_path):
    from cxrkit.api import external

    with pytest.raises(ValueError, match="names a folder"):
        external(tmp_path, "cohen", tmp_path, name="../elsewhere")


def test_external_passes_adapter_options_to_the_collection(tiny_run, tmp_path, capsys):
    """``--views PA`` reaches the cohen adapter: only the PA rows of the mapped classes are evaluated."""
    from support.paths import shared_data

    from cxrkit.data import load_dataset

    cohen = shared_data("cohen")
    run = shutil.copytree(tiny_run, tmp_path / "run")
    base = ["external", str(run), "--dataset", "cohen", "--dataset_dir", str(cohen), "--task", "covid_vs_normal",
            "--class_map", "COVID-19=COVID,No Finding=Normal", "--device", "cpu", "--bootstrap", "0",
            "--no_progress"]
    assert main([*base, "--name", "all-views"]) == 0
    assert main([*base, "--name", "pa", "--views", "PA"]) == 0
    capsys.readouterr()
    n = {name: json.loads((run / "external" / name / "metrics.json").read_text())["n_images"]
         for name in ("all-views", "pa")}
    expected = {name: len(load_dataset("cohen", cohen, "covid_vs_normal", **options).items)
                for name, options in (("all-views", {}), ("pa", {"views": "PA"}))}
    assert n == expected and 0 < n["pa"] < n["all-views"]
    info = json.loads((run / "external" / "pa" / "metrics.json").read_text())
    assert info["dataset_options"] == {"views": "PA"}
    from cxrkit.report.report import write_report

    sections = _sections(write_report(run, bootstrap=0, audit="false").read_text())
    notes = sections["Results by split (internal and external)"]
    assert "external: pa: dataset `cohen`, task covid_vs_normal (options views=PA)" in notes
    assert main([*base, "--name", "bad", "--view", "PA"]) != 0  # a misspelled adapter option is named
    assert "view" in capsys.readouterr().err
    assert not (run / "external" / "bad" / "metrics.json").exists()
