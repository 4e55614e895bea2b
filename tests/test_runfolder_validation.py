"""A run folder's records are checked by one reader before any command acts on them.

``split.json``: valid JSON, its schema, labels in range of the run's classes, every entry inside the dataset
folder (the one the run recorded, or the one ``--dataset_dir`` relocates it to); ``calibration.json``: every
field, the temperature a finite positive number. ``cxrkit audit``, ``external``, ``calibrate`` and ``predict``
answer each problem with exit code 1 and one line naming the file, the field and what is wrong, and open no
file outside the dataset.
"""

from __future__ import annotations

import builtins
import io
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.paths import RADIOGRAPHY, shared_data
from support.runfolders import copy_run

from cxrkit.calibration import CalibrationError, read_calibration
from cxrkit.cli import main
from cxrkit.data import load_dataset, load_split, make_split
from cxrkit.data.errors import DatasetError
from cxrkit.data.manifest import ManifestError, read_manifest

COMMANDS = ("audit", "external", "calibrate", "predict")
CALIBRATION = {"temperature": 1.5, "fitted_on": "validation", "n_images": 8, "nll_before": 0.7, "nll_after": 0.6,
               "ece_before": 0.1, "ece_after": 0.05, "bins": 15, "method": "temperature scaling"}


# ---- the reader itself (no trained run) -------------------------------------------------------------------
def _folder_dataset(root: Path) -> Path:
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for n in range(5):
            Image.fromarray(np.full((8, 8), n * 20 + (cls == "b"), np.uint8)).save(root / cls / f"{cls}{n}.png")
    return root


def _outside_png(folder: Path) -> Path:
    """A real, readable image outside every dataset folder: a reader that followed an entry here would succeed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "secret.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(path)
    return path


def _valid_manifest(tmp_path: Path) -> tuple[Path, dict]:
    spec = load_dataset("folder", _folder_dataset(tmp_path / "ds"))
    path = make_split(spec, seed=0).save(tmp_path / "run" / "split.json")
    return path, json.loads(path.read_text())


def test_the_engines_manifest_reads_and_resolves_under_its_root_or_a_relocation(tmp_path):
    path, data = _valid_manifest(tmp_path)
    manifest = read_manifest(path, ["a", "b"])
    assert manifest.root == str(tmp_path / "ds") and manifest.classes == ["a", "b"]
    assert all(Path(f).is_file() and Path(f).parent.parent == tmp_path / "ds" for f, _ in manifest.items("val"))
    moved = read_manifest(path, ["a", "b"], dataset_dir=tmp_path / "moved")
    assert [f for f, _ in moved.items("train")] == [str(tmp_path / "moved" / e["image"]) for e in data["train"]]


def test_a_split_of_an_adapter_without_a_root_records_the_folder_holding_its_images(tmp_path):
    """A plugin adapter may leave ``DatasetSpec.root`` empty: the manifest still has a root and relative entries."""
    from cxrkit.data import DatasetSpec

    spec = load_dataset("folder", _folder_dataset(tmp_path / "ds"))
    rootless = DatasetSpec(name="plugin", task="t", classes=spec.classes, items=spec.items)
    path = make_split(rootless, seed=0).save(tmp_path / "split.json")
    manifest = read_manifest(path, spec.classes)
    assert manifest.root == str(tmp_path / "ds")
    assert sorted(f for f, _ in manifest.items("train") + manifest.items("val") + manifest.items("test")) == sorted(
        i["image"] for i in spec.items)


def _set_entry(field, value):
    def change(data):
        data["val"][0][field] = value
    return change


@pytest.mark.parametrize("change, field, problem", [
    (lambda d: d.pop("format"), "format", "not a cxrkit split manifest"),
    (lambda d: d.update(classes="a,b"), "classes", "must be a list of two or more class names"),
    (lambda d: d.update(classes=["a", "b", "c"]), "classes", r"differ from the classes of the run, \['a', 'b'\]"),
    (lambda d: d.update(root=None), "root", "must be the dataset folder"),
    (lambda d: d.pop("val"), "val", "missing"),
    (lambda d: d.update(test={"image": "a/a0.png"}), "test", "must be a list of"),
    (lambda d: d["val"].__setitem__(0, "a/a0.png"), r"val\[0\]", "must be an object with image and label"),
    (_set_entry("label", 2), r"val\[0\]\.label", r"2 is not a class index of the run \(0..1: a, b\)"),
    (_set_entry("label", -1), r"val\[0\]\.label", "-1 is not a class index"),
    (_set_entry("label", "0"), r"val\[0\]\.label", "'0' is not a class index"),
    (_set_entry("label", True), r"val\[0\]\.label", "True is not a class index"),
    (_set_entry("image", "/etc/passwd"), r"val\[0\]\.image", "'/etc/passwd' is an absolute path"),
    (_set_entry("image", "../../etc/passwd"), r"val\[0\]\.image", "steps out of the dataset folder"),
    (_set_entry("image", "a/../../x.png"), r"val\[0\]\.image", "steps out of the dataset folder"),
    (_set_entry("image", "..\\..\\x.png"), r"val\[0\]\.image", "steps out of the dataset folder"),
    (_set_entry("image", "C:\\x.png"), r"val\[0\]\.image", "is an absolute path"),
    (_set_entry("image", "a/\x00.png"), r"val\[0\]\.image", "NUL"),
    (_set_entry("image", ""), r"val\[0\]\.image", "must be a non-empty path"),
    (_set_entry("size", -3), r"val\[0\]\.size", "must be a file size"),
    (lambda d: d.update(fold=1.5), "fold", "must be a fold number or null"),
])
def test_each_manifest_problem_names_the_file_and_the_field(tmp_path, change, field, problem):
    path, data = _valid_manifest(tmp_path)
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=f"^{path}: {field}: .*{problem}") as info:
        read_manifest(path, ["a", "b"])
    assert "\n" not in str(info.value)


def test_readers_that_use_the_labels_meaning_need_the_same_class_names(tmp_path):
    path, data = _valid_manifest(tmp_path)
    data["classes"] = ["b", "a"]
    path.write_text(json.dumps(data))
    assert read_manifest(path, ["a", "b"]).classes == ["b", "a"]  # as many classes: the labels are in range
    with pytest.raises(ManifestError, match=rf"^{path}: classes: \['b', 'a'\] differ from the classes of the run"):
        read_manifest(path, ["a", "b"], same_names=True)


def test_truncated_or_non_object_manifest(tmp_path):
    path, _ = _valid_manifest(tmp_path)
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ManifestError, match=f"^{path}: not valid JSON .*truncated"):
        read_manifest(path)
    path.write_text("[1, 2]")
    with pytest.raises(ManifestError, match=f"^{path}: format: not a cxrkit split manifest .*got list"):
        read_manifest(path)


def test_an_entry_with_a_newline_still_gives_one_line(tmp_path):
    path, data = _valid_manifest(tmp_path)
    data["val"][0]["image"] = "a/x.png\n../../etc/passwd"
    path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="steps out") as info:
        read_manifest(path)
    assert "\n" not in str(info.value) and "\\n" in str(info.value)


def test_training_side_reader_refuses_an_escaping_entry_too(tmp_path, monkeypatch):
    """``load_split`` (``--split_manifest``, ``--resume``, ``run evaluate --subset``) goes through the same check."""
    path, data = _valid_manifest(tmp_path)
    outside = _outside_png(tmp_path / "elsewhere")
    data["val"][0]["image"] = os.path.relpath(outside, tmp_path / "ds")
    path.write_text(json.dumps(data))
    spec = load_dataset("folder", tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"split\.json: val\[0\]\.image: .*steps out of the dataset folder"):
        load_split(path, spec)


@pytest.mark.parametrize("field, value, problem", [
    ("temperature", "abc", "must be a finite positive number, got 'abc'"),
    ("temperature", 0, "must be a finite positive number, got 0"),
    ("temperature", -1.0, "must be a finite positive number, got -1.0"),
    ("temperature", math.nan, "must be a finite positive number, got nan"),
    ("temperature", math.inf, "must be a finite positive number, got inf"),
    ("temperature", True, "must be a finite positive number, got True"),
    ("temperature", None, "must be a finite positive number, got None"),
    ("n_images", "eight", "must be a number of images"),
    ("ece_after", 3.0, r"must be a number in \[0, 1\]"),
    ("fitted_on", 5, "must be the name of the split"),
])
def test_calibration_file_problems_name_the_field(tmp_path, field, value, problem):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({**CALIBRATION, field: value}))
    with pytest.raises(CalibrationError, match=f"^{path}: {field}: {problem}"):
        read_calibration(tmp_path)
    path.write_text(json.dumps({k: v for k, v in CALIBRATION.items() if k != "temperature"}))
    with pytest.raises(CalibrationError, match=f"^{path}: temperature: missing"):
        read_calibration(tmp_path)
    path.write_text(json.dumps(CALIBRATION)[:20])
    with pytest.raises(CalibrationError, match=f"^{path}: not a cxrkit calibration file"):
        read_calibration(tmp_path)


# ---- the four commands on a trained run ---------------------------------------------------------------------
@pytest.fixture
def run(tiny_run, tmp_path) -> Path:
    """A changeable copy of the session's tiny trained run (its models linked, not copied), without what other
    tests of the session may have added to the shared run (an audit, external evaluations, a calibration)."""
    run = copy_run(tiny_run, tmp_path / "run")
    for extra in ("audit", "external"):
        shutil.rmtree(run / extra, ignore_errors=True)
    (run / "calibration.json").unlink(missing_ok=True)
    return run


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every file opened by Python code (``open``, ``io.open``: PIL, json, Path.read_*) during the test."""
    seen: list[str] = []
    real = builtins.open

    def spy(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)):
            seen.append(os.path.abspath(os.fspath(file)))
        return real(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    return seen


def _argv(command: str, run: Path) -> list[str]:
    image = sorted(shared_data(*RADIOGRAPHY, "COVID").glob("*.png"))[0]
    return {
        "audit": ["audit", str(run), "--device", "cpu", "--no_progress", "--max_images", "4", "--no_masks"],
        "external": ["external", str(run), "--dataset", "radiography", "--dataset_dir", str(shared_data(*RADIOGRAPHY)),
                     "--max_items", "4", "--device", "cpu", "--bootstrap", "0", "--no_progress"],
        "calibrate": ["calibrate", str(run)],
        "predict": ["predict", str(run), str(image), "--device", "cpu", "--no_progress"],
    }[command]


def _one_error_line(command: str, err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith(f"cxrkit {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _corrupt_split(kind: str, run: Path, outside: Path) -> str:
    """Change ``split.json`` in one way; returns what the error must say after the file name."""
    path = run / "split.json"
    data = json.loads(path.read_text())
    n_classes = len(data["classes"])
    entry = data["test"][0]
    root = data["root"]
    if kind == "truncated":
        text = path.read_text()
        path.write_text(text[: len(text) // 2])
        return "not valid JSON"
    if kind == "schema":
        data["test"][0] = entry["image"]
    elif kind == "label":
        entry["label"] = n_classes
    elif kind == "absolute":
        entry["image"] = str(outside)
    elif kind == "escape":
        entry["image"] = os.path.relpath(outside, root)
    elif kind == "passwd":
        entry["image"] = "../../etc/passwd"
    path.write_text(json.dumps(data))
    return {"schema": r"test\[0\]: must be an object with image and label",
            "label": rf"test\[0\]\.label: {n_classes} is not a class index of the run \(0..{n_classes - 1}: ",
            "absolute": r"test\[0\]\.image: '.*secret\.png' is an absolute path",
            "escape": r"test\[0\]\.image: '\.\./.*secret\.png' steps out of the dataset folder",
            "passwd": r"test\[0\]\.image: '\.\./\.\./etc/passwd' steps out of the dataset folder"}[kind]


@pytest.mark.parametrize("kind", ["truncated", "schema", "label", "absolute", "escape", "passwd"])
@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_split_manifest_is_one_line_naming_file_and_entry(command, kind, run, tmp_path, capsys, opened):
    import re

    outside = _outside_png(tmp_path / "elsewhere")
    problem = _corrupt_split(kind, run, outside)
    before = {p: p.read_bytes() for p in (run / "predictions.csv", run / "configs" / "inference.yaml")}
    opened.clear()
    assert main(_argv(command, run)) == 1
    line = _one_error_line(command, capsys.readouterr().err)
    assert re.search(rf"{re.escape(str(run / 'split.json'))}: {problem}", line), line
    assert str(outside) not in opened and "/etc/passwd" not in opened
    assert not (run / "audit" / "audit.json").exists() and not (run / "external").exists()
    assert not (run / "calibration.json").exists()
    assert all(p.read_bytes() == content for p, content in before.items())


def _corrupt_calibration(kind: str, run: Path) -> str:
    path = run / "calibration.json"
    values = {"text": "abc", "zero": 0, "negative": -2.0, "nan": math.nan, "infinite": math.inf}
    if kind == "truncated":
        path.write_text(json.dumps(CALIBRATION)[:30])
        return "not a cxrkit calibration file"
    path.write_text(json.dumps({**CALIBRATION, "temperature": values[kind]}))
    return f"temperature: must be a finite positive number, got {values[kind]!r}"


@pytest.mark.parametrize("kind", ["text", "zero", "negative", "nan", "infinite", "truncated"])
@pytest.mark.parametrize("command", ["audit", "external", "predict"])
def test_a_bad_calibration_file_is_one_line_naming_file_and_field(command, kind, run, capsys):
    problem = _corrupt_calibration(kind, run)
    assert main(_argv(command, run)) == 1
    line = _one_error_line(command, capsys.readouterr().err)
    assert f"{run / 'calibration.json'}: {problem}" in line, line
    assert not (run / "audit" / "audit.json").exists() and not (run / "external").exists()


@pytest.mark.parametrize("kind", ["text", "nan", "truncated"])
def test_calibrate_replaces_a_bad_calibration_file_and_says_so(kind, run, capsys, caplog):
    problem = _corrupt_calibration(kind, run)
    assert main(["calibrate", str(run)]) == 0
    assert f"replacing an invalid calibration file: {run / 'calibration.json'}: {problem}" in caplog.text
    fitted = read_calibration(run)
    assert fitted is not None and math.isfinite(fitted.temperature) and fitted.temperature > 0
    assert main(_argv("predict", run)) == 0 and "calibrated probabilities" in capsys.readouterr().out


def _moved_dataset(run: Path, dest: Path) -> Path:
    """The run's dataset moved: the files of its validation and test parts copied under ``dest``."""
    data = json.loads((run / "split.json").read_text())
    for entry in data["val"] + data["test"]:
        (dest / entry["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(data["root"]) / entry["image"], dest / entry["image"])
    data["root"] = str(dest.parent / "not-here-any-more")
    (run / "split.json").write_text(json.dumps(data))
    return dest


def test_audit_reads_a_relocated_dataset_only_under_dataset_dir(run, tmp_path, capsys, opened):
    moved = _moved_dataset(run, tmp_path / "moved")
    assert main(_argv("audit", run)) == 1
    line = _one_error_line("audit", capsys.readouterr().err)
    assert "not-here-any-more recorded in" in line and "does not exist; pass --dataset_dir" in line
    opened.clear()

    original = json.loads((run / "split.json").read_text())
    assert main([*_argv("audit", run), "--dataset_dir", str(moved), "--json"]) in (0, 3)
    audit = json.loads(capsys.readouterr().out)
    assert audit["n_images"] == min(4, len(original["test"])) and audit["part"] == "test"
    images = [p for p in opened if p.endswith(".png") and "/audit/" not in p]
    assert images and all(p.startswith(str(moved) + os.sep) for p in images), images

    # relocated, the entries must still stay inside the folder given
    outside = _outside_png(tmp_path / "elsewhere")
    original["test"][0]["image"] = os.path.relpath(outside, moved)
    (run / "split.json").write_text(json.dumps(original))
    opened.clear()
    assert main([*_argv("audit", run), "--dataset_dir", str(moved)]) == 1
    line = _one_error_line("audit", capsys.readouterr().err)
    assert f"{run / 'split.json'}: test[0].image: " in line and "steps out of the dataset folder" in line
    assert str(outside) not in opened


def test_the_untouched_run_still_works_for_every_command(run, capsys):
    assert main(_argv("calibrate", run)) == 0
    assert main(_argv("predict", run)) == 0
    assert main(_argv("external", run)) == 0
    assert (run / "external" / "radiography" / "metrics.json").is_file()
    assert main(_argv("audit", run)) in (0, 3)
    assert (run / "audit" / "audit.json").is_file()
