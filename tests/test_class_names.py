"""Class names are data (issue 15, finding 1): every entry point refuses names that cannot be stored safely, and
the run folder's configs read the names from ``metadata.json`` so no config parser ever evaluates one.

The planted names are the MONAI config sigils: ``$`` (Python code), ``%`` (a macro: here one that includes code
from a YAML file in the working directory), ``@`` (a reference) and ``#`` (the id separator). Code planted this
way would create ``MARKER`` in the working directory; no test may ever find it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data import load_dataset
from cxrkit.data.classnames import MAX_LENGTH, ClassNameError, check_class_names, class_name_problem
from support.paths import REPO

CODE = "$__import__('pathlib').Path('MARKER').touch()"
#: sigil -> a class name that, parsed as config, would run code, include code or change the name.
PLANTED = {
    "$": CODE,
    "%": "%evil.yaml#x",  # a macro: the value of x in ./evil.yaml, which is CODE
    "@": "@bundle_root",
    "#": "COVID#MARKER",
}
#: names that must round-trip exactly (spaces, hyphens, accents, brackets, '@' and '%' inside).
UNUSUAL = ["No finding - clear [50%] a@b", "Pneumonía"]


def _workdir(folder: Path, monkeypatch) -> Path:
    """``folder`` as the working directory, holding the YAML file the ``%`` macro would include."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evil.yaml").write_text(f'x: "{CODE}"\n')
    monkeypatch.chdir(folder)
    return folder


def _images(folder: Path, n: int, size: int = 32) -> list[Path]:
    from cxrkit.demo import synthetic_xray

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(synthetic_xray(i % 2 == 0, size, rng)).save(path)
        paths.append(path)
    return paths


def _csv_dataset(root: Path, names: list[str], per_class: int = 4) -> Path:
    images = _images(root / "img", per_class * len(names))
    with open(root / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for i, path in enumerate(images):
            writer.writerow([f"img/{path.name}", names[i % len(names)]])
    return root


def _folder_dataset(root: Path, names: list[str], per_class: int = 4) -> Path:
    for name in names:
        _images(root / name, per_class)
    return root


def _train_args(dataset: str, data: Path, out: Path, plugin: str = "random") -> list[str]:
    return ["run", "training", str(REPO / "bundles" / "random"), "--plugin", plugin, "--dataset", dataset,
            "--dataset_dir", str(data), "--image_size", "32", "--epochs", "1", "--batch_size", "4", "--output_dir",
            str(out), "--device", "cpu", "--progress", "false", "--tensorboard_images", "0"]


# ---- the policy ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, reason", [
    (CODE, "starts with '\\$', which MONAI bundle configs run as Python code"),
    ("@bundle_root", "starts with '@'.*reference"),
    ("%evil.yaml#x", "starts with '%'.*macro"),
    ("COVID#MARKER", "contains '#', MONAI's config id separator"),
    ("a/b", "path separator"), ("a\\b", "path separator"), ("..", "names a folder"),
    ("", "empty"), ("   ", "empty"), ("x" * (MAX_LENGTH + 1), f"at most {MAX_LENGTH}"),
    ("line\nbreak", "U\\+000A"), ("tab\there", "U\\+0009"), ("rtl\u202eoverride", "U\\+202E"), (3, "not text"),
])
def test_names_that_cannot_be_stored_are_refused_with_the_reason_and_the_policy(name, reason):
    import re

    assert re.search(reason, class_name_problem(name))
    with pytest.raises(ClassNameError, match=rf"somewhere: the class name .* cannot be used: .*{reason}.*Rename the "
                                             r"class; class names are 1-64 characters, do not start with \$, @ or %"):
        check_class_names(["Normal", name], "somewhere")


@pytest.mark.parametrize("name", [*UNUSUAL, "COVID-19", "Viral Pneumonia", "肺炎", "x" * MAX_LENGTH, "a$b", "50%"])
def test_unusual_but_safe_names_are_accepted(name):
    assert class_name_problem(name) is None
    assert check_class_names([name], "here") == [name]


# ---- entry points: adapters, training, review export, the review page -------------------------------------
@pytest.mark.parametrize("sigil", list(PLANTED))
def test_csv_and_folder_adapters_refuse_each_sigil_naming_where(tmp_path, sigil):
    planted = PLANTED[sigil]
    data = _csv_dataset(tmp_path / "csv", [planted, "Normal"])
    with pytest.raises(ClassNameError, match=rf"csv: row 2, column label of {data / 'labels.csv'}: the class name"):
        load_dataset("csv", data)
    folder = _folder_dataset(tmp_path / "folder", [planted, "Normal"])
    with pytest.raises(ClassNameError, match=rf"folder: a class folder of {folder}: the class name"):
        load_dataset("folder", folder)
    with pytest.raises(ClassNameError, match="folder: classes=: the class name"):
        load_dataset("folder", folder, classes=[planted, "Normal"])


@pytest.mark.parametrize("dataset", ["csv", "folder"])
@pytest.mark.parametrize("sigil", list(PLANTED))
def test_a_planted_class_name_never_runs_through_training_inference_and_evaluation(
        tmp_path, monkeypatch, capsys, dataset, sigil):
    """Training refuses the data; and if a run folder were written anyway, neither inference nor evaluation of it
    would run the planted code (before the fix, training went through and `run inference` created MARKER)."""
    work = _workdir(tmp_path / "work", monkeypatch)
    names = [PLANTED[sigil], "Normal"]
    data = (_csv_dataset if dataset == "csv" else _folder_dataset)(work / "data", names)
    run = work / "run"
    rc = main(_train_args(dataset, data, run))
    error = capsys.readouterr().err
    if (run / "models" / "model.pt").is_file():  # only where the names were not refused
        main(["run", "inference", str(run), "--input", str(data), "--device", "cpu"])
        main(["run", "evaluate", str(run), "--dataset", dataset, "--dataset_dir", str(data), "--device", "cpu",
              "--progress", "false"])
    assert not (work / "MARKER").exists(), "the planted class name ran as code"
    assert rc != 0 and "ClassNameError" in error and "cannot be used" in error
    assert not (run / "models" / "model.pt").exists()


class _Datastore:
    """A MONAI Label client whose datastore holds reviews saved by anyone (the REST API takes any label text)."""

    url = "http://127.0.0.1:1"

    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def datastore(self) -> dict:
        return {"objects": {study: {"image": {"ext": ".png", "info": {"name": f"{study}.png"}},
                                    "labels": {"final": {"ext": ".png", "info": {"label": label, "label_index": 0}}}}
                            for study, label in self.labels.items()}}

    def image(self, image_id: str) -> bytes:
        raise AssertionError("the export must refuse before it reads any image")


def test_review_export_refuses_stored_labels_with_sigils_and_the_page_marks_them(tmp_path):
    from cxrkit.review.client import ReviewError
    from cxrkit.review.export import export_reviews
    from cxrkit.review.page import list_page
    from cxrkit.review.studies import parse_studies

    client = _Datastore({f"s{i}": name for i, name in enumerate(PLANTED.values())} | {"ok": "Normal"})
    out = tmp_path / "reviews.csv"
    with pytest.raises(ReviewError, match=r"4 stored review label\(s\) cannot be used as class names \(study 's0': "
                                          r"label .*starts with '\$'.*Review those studies again"):
        export_reviews(client, out, studies_dir=tmp_path)
    assert not out.exists()

    studies = parse_studies(client.datastore())
    assert [s.review.problem is not None for s in studies] == [False, True, True, True, True]  # natural order: ok, s0..
    html = list_page(studies, set(), 1, 50, client.url, None, "127.0.0.1:1", True)
    assert html.count("not a usable class name") == 4 and "$__import__(&#x27;pathlib&#x27;)" in html


# ---- the run folder's configs read the names as data ---------------------------------------------------------
R18 = "test_r18_class_names"


@pytest.fixture(scope="module")
def unusual_run(tmp_path_factory):
    """A 1-epoch 32 px randomly initialised ResNet18 run (a plugin registered for this module) trained on a CSV
    whose labels are :data:`UNUSUAL`: ``(run folder, data folder)``."""
    from cxrkit.registry import weights
    from cxrkit.weights import WeightSource

    weights.register(R18, WeightSource(name=R18, architecture="resnet18", filenames=(), origin="", pretrained=False,
                                       description="random ResNet18 (tests)"), origin="tests")
    try:
        root = tmp_path_factory.mktemp("unusual")
        data = _csv_dataset(root / "data", UNUSUAL)
        run = root / "run"
        assert main(_train_args("csv", data, run, plugin=R18)) == 0
        yield run, data
    finally:
        weights.unregister(R18)


@pytest.fixture
def synthetic_images(tmp_path) -> Path:
    return _images(tmp_path / "images", 2)[0].parent


def _label_task(run: Path):
    pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
    from cxrkit.label.app.lib.infers import CXRClassificationInfer

    return CXRClassificationInfer(str(run), {})


def test_unusual_names_round_trip_through_every_reader(unusual_run, tmp_path, monkeypatch):
    from cxrkit.serve import Predictor

    run, data = unusual_run
    expected = sorted(UNUSUAL)  # the csv adapter sorts the labels
    assert json.loads((run / "summary.json").read_text())["classes"] == expected
    assert "Pneumon" not in (run / "configs" / "inference.yaml").read_text()  # the configs never hold a name
    monkeypatch.chdir(tmp_path)
    assert main(["run", "inference", str(run), "--input", str(data / "img"), "--device", "cpu"]) == 0
    with open(run / "inference" / "predictions.csv", encoding="utf-8") as fh:
        assert {row["pred_class"] for row in csv.DictReader(fh)} <= set(expected)
    assert main(["run", "evaluate", str(run), "--dataset", "csv", "--dataset_dir", str(data), "--device", "cpu",
                 "--progress", "false"]) == 0
    assert json.loads((run / "evaluation" / "metrics.json").read_text(encoding="utf-8"))["classes"] == expected
    result = Predictor.load(run, device="cpu").predict([data / "img"], progress=False)
    assert result.classes == expected and {p.label for p in result.predictions} <= set(expected)
    task = _label_task(run)
    _, answer = task({"image": str(data / "img" / "img0.png"), "device": "cpu"})
    assert [p["label"] for p in answer["prediction"]] == expected


@pytest.mark.parametrize("sigil", list(PLANTED))
def test_names_planted_in_metadata_are_data_to_the_configs_and_refused_by_the_runners(
        tiny_run, synthetic_images, tmp_path, monkeypatch, capsys, sigil):
    """Even a run folder whose metadata.json was edited to hold a sigil name runs no code: the configs read the
    names as data; `cxrkit run` and the MONAI Label task refuse such a folder with a clear error; the predictor
    shows the names verbatim."""
    from monai.bundle import ConfigParser

    from cxrkit.serve import Predictor

    work = _workdir(tmp_path / "work", monkeypatch)
    planted_run = work / "planted"
    shutil.copytree(tiny_run, planted_run, ignore=shutil.ignore_patterns("inference", "evaluation", "tensorboard"))
    names = [PLANTED[sigil], CODE if sigil != "$" else "Normal"]
    meta_file = planted_run / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": names[0], "1": names[1]}
    meta_file.write_text(json.dumps(meta))

    for kind in ("inference", "evaluate"):
        parser = ConfigParser()
        parser.read_config(str(planted_run / "configs" / f"{kind}.yaml"))
        parser["bundle_root"] = str(planted_run)
        assert parser.get_parsed_content("classes") == names  # verbatim: nothing parsed, evaluated or resolved
        assert parser.get_parsed_content("num_classes") == 2
    assert main(["run", "inference", str(planted_run), "--input", str(synthetic_images), "--device", "cpu"]) != 0
    assert main(["run", "evaluate", str(planted_run), "--dataset", "folder", "--dataset_dir", str(synthetic_images),
                 "--device", "cpu"]) != 0
    assert capsys.readouterr().err.count(f"ClassNameError: {meta_file} (channel_def): the class name") == 2
    result = Predictor.load(planted_run, device="cpu").predict([synthetic_images], progress=False)
    assert result.classes == names and result.predictions[0].label in names
    with pytest.raises(ClassNameError, match="channel_def"):
        _label_task(planted_run)
    assert not (work / "MARKER").exists(), "a planted class name ran as code"


def test_monai_runner_reads_planted_metadata_as_data(tiny_run, synthetic_images, tmp_path, monkeypatch):
    """MONAI's own runner loads metadata.json as `_meta_` but evaluates nothing in it: the inference config's
    classes are the planted strings, verbatim, in predictions.csv."""
    work = _workdir(tmp_path / "work", monkeypatch)
    planted_run = work / "planted"
    shutil.copytree(tiny_run, planted_run, ignore=shutil.ignore_patterns("inference", "evaluation", "tensorboard"))
    meta_file = planted_run / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["network_data_format"]["outputs"]["pred"]["channel_def"] = {"0": CODE, "1": "@bundle_root"}
    meta_file.write_text(json.dumps(meta))
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file",
         str(planted_run / "configs" / "inference.yaml"), "--bundle_root", str(planted_run),
         "--input", str(synthetic_images), "--device", "cpu", "--progress", "false"],
        cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (work / "MARKER").exists()
    with open(planted_run / "inference" / "predictions.csv", encoding="utf-8") as fh:
        row = next(csv.DictReader(fh))
    assert row["pred_class"] in (CODE, "@bundle_root")
