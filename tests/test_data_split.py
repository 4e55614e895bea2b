"""Splits: seeded, stratified, grouped by patient, k folds, manifests, leakage audit."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.data import DatasetError, load_dataset
from cxrkit.data.split import audit_leakage, load_split, make_split
from support.paths import shared_data


def _names(items):
    return [Path(i["image"]).name for i in items]


def _patients(items):
    return {i["patient_id"] for i in items if i["patient_id"]}


@pytest.fixture(scope="module")
def radiography():
    return load_dataset("radiography", shared_data("radiography"), task="three_class")


@pytest.fixture(scope="module")
def cohen_full(tmp_path_factory):
    """The real Cohen metadata.csv (751 rows, many patients with several images) with a tiny
    distinct PNG fabricated for every row, so the real patient structure can be split."""
    real = shared_data("cohen", "metadata.csv")
    root = tmp_path_factory.mktemp("cohen")
    shutil.copy(real, root / "metadata.csv")
    with open(real, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    (root / "images").mkdir()
    for n, name in enumerate(sorted({r["filename"] for r in rows if r["folder"] == "images"})):
        pixels = np.full((4, 4), n % 256, np.uint8)
        pixels[0, 0], pixels[0, 1] = n // 256, 7
        Image.fromarray(pixels).save(root / "images" / name, format="PNG")
    return load_dataset("cohen", root, task="covid_vs_rest", views="PA,AP,AP Supine,L")


def test_default_is_stratified_60_20_20_and_seeded(radiography):
    a = make_split(radiography, seed=3)
    b = make_split(radiography, seed=3)
    c = make_split(radiography, seed=4)
    assert (len(a.train), len(a.val), len(a.test)) == (60, 20, 20)
    assert a.manifest["counts"]["val"] == {"COVID": 8, "Normal": 8, "Viral Pneumonia": 4}
    assert a.manifest["counts"]["test"] == {"COVID": 8, "Normal": 8, "Viral Pneumonia": 4}
    assert a.manifest["test_fraction"] == 0.2 and a.manifest["test_note"] is None
    assert _names(a.val) == _names(b.val) and _names(a.test) == _names(b.test) and _names(a.test) != _names(c.test)
    assert not set(_names(a.train)) & set(_names(a.val))
    assert not (set(_names(a.train)) | set(_names(a.val))) & set(_names(a.test))
    assert a.audit.ok


def test_test_fraction_zero_is_the_studys_80_20(radiography):
    a = make_split(radiography, seed=3, test_fraction=0)
    assert (len(a.train), len(a.val), len(a.test)) == (80, 20, 0)
    assert a.manifest["counts"]["val"] == {"COVID": 8, "Normal": 8, "Viral Pneumonia": 4}
    assert a.manifest["test"] == [] and a.manifest["test_fraction"] == 0.0


def test_cohen_real_patients_never_in_both_splits(cohen_full):
    spec = cohen_full
    per_patient = Counter(i["patient_id"] for i in spec.items)
    assert sum(n > 1 for n in per_patient.values()) > 50  # the real collection: many images per patient
    for seed in range(3):
        split = make_split(spec, seed=seed)
        parts = [_patients(split.train), _patients(split.val), _patients(split.test)]
        assert not parts[0] & parts[1] and not parts[0] & parts[2] and not parts[1] & parts[2]
        assert split.audit.ok and split.audit.patient_overlap == []
        assert 0.12 < len(split.val) / len(spec.items) < 0.28
        assert 0.12 < len(split.test) / len(spec.items) < 0.28
        assert split.manifest["strategy"].count("StratifiedGroupKFold") == 2


def test_cohen_real_sample_split_has_no_shared_patient():
    spec = load_dataset("cohen", shared_data("cohen"), views="PA,AP,AP Supine,L")
    split = make_split(spec, seed=0)
    assert not _patients(split.train) & _patients(split.val)
    assert split.audit.ok


def test_k_folds_cover_every_item_once(cohen_full):
    folds = [make_split(cohen_full, folds=5, fold=k, seed=1, test_fraction=0) for k in range(5)]
    val = [name for f in folds for name in (i["image"] for i in f.val)]
    assert sorted(val) == sorted(i["image"] for i in cohen_full.items)
    for f in folds:
        assert len(f.train) + len(f.val) == len(cohen_full.items)
        assert not _patients(f.train) & _patients(f.val)


def test_k_folds_share_one_held_out_test_part(cohen_full):
    folds = [make_split(cohen_full, folds=4, fold=k, seed=1) for k in range(4)]
    test = [i["image"] for i in folds[0].test]
    assert test and all([i["image"] for i in f.test] == test for f in folds)
    val = sorted(i["image"] for f in folds for i in f.val)
    assert val == sorted(i["image"] for i in cohen_full.items if i["image"] not in set(test))
    for f in folds:
        assert not (_patients(f.train) | _patients(f.val)) & _patients(f.test)


def test_k_folds_without_patients(radiography):
    folds = [make_split(radiography, folds=4, fold=k, test_fraction=0) for k in range(4)]
    assert sorted(n for f in folds for n in _names(f.val)) == sorted(_names(radiography.items))
    assert all(f.manifest["counts"]["val"] == {"COVID": 10, "Normal": 10, "Viral Pneumonia": 5} for f in folds)


def test_manifest_round_trip_reproduces_split_exactly(tmp_path, cohen_full):
    split = make_split(cohen_full, seed=7)
    path = split.save(tmp_path / "run" / "split.json")
    manifest = json.loads(path.read_text())
    assert manifest["dataset"] == "cohen" and manifest["task"] == "covid_vs_rest" and manifest["seed"] == 7
    assert manifest["classes"] == ["COVID-19", "Other"] and manifest["val_fraction"] == 0.2
    assert manifest["leakage_audit"]["ok"] is True
    assert all(not Path(e["image"]).is_absolute() for e in manifest["train"] + manifest["val"])
    text = path.read_text()
    assert "patient" not in json.dumps(manifest["train"] + manifest["val"])
    assert '"patient_id"' not in text

    again = load_split(path, cohen_full)
    assert [i["image"] for i in again.train] == [i["image"] for i in split.train]
    assert [i["image"] for i in again.val] == [i["image"] for i in split.val]
    assert [i["label"] for i in again.val] == [i["label"] for i in split.val]


def test_load_split_names_missing_files(tmp_path):
    root = tmp_path / "ds"
    for cls in ("a", "b"):
        for n in range(5):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), n * 10 + (cls == "b"), np.uint8)).save(root / cls / f"{cls}{n}.png")
    spec = load_dataset("folder", root)
    split = make_split(spec, seed=0)
    path = split.save(tmp_path / "split.json")
    moved = load_split(path, load_dataset("folder", shutil.copytree(root, tmp_path / "moved")))
    assert [Path(i["image"]).relative_to(tmp_path / "moved") for i in moved.val] == [
        Path(i["image"]).relative_to(root) for i in split.val
    ]
    gone = Path(split.val[0]["image"])
    gone.unlink()
    with pytest.raises(DatasetError, match=f"1 file.*missing.*{gone.parent.name}/{gone.name}"):
        load_split(path, load_dataset("folder", root))
    with pytest.raises(DatasetError, match="not a cxrkit split manifest"):
        (tmp_path / "bad.json").write_text("{}")
        load_split(tmp_path / "bad.json", spec)


def test_predefined_split(tmp_path):
    spec = load_dataset("coronahack", shared_data("coronahack"), allow_missing=True)
    split = make_split(spec, use_predefined=True, test_fraction=0)
    assert all(i["split"] == "train" for i in split.train) and all(i["split"] == "test" for i in split.val)
    assert split.manifest["use_predefined"] is True
    three = make_split(spec, use_predefined=True)  # the collection's TEST rows are the test part
    assert sorted(_names(three.test)) == sorted(_names(split.val))
    assert all(i["split"] == "train" for i in three.train + three.val) and three.val
    radiography = load_dataset("radiography", shared_data("radiography"))
    with pytest.raises(DatasetError, match="defines no split"):
        make_split(radiography, use_predefined=True)


def test_audit_finds_shared_patients_and_identical_files(tmp_path):
    def png(name, value):
        Image.fromarray(np.full((6, 6), value, np.uint8)).save(tmp_path / name)
        return str(tmp_path / name)

    train = [
        {"image": png("t1.png", 1), "label": 0, "patient_id": "p1"},
        {"image": png("t2.png", 2), "label": 1, "patient_id": "p2"},
    ]
    val = [
        {"image": png("v1.png", 3), "label": 0, "patient_id": "p1"},  # same patient
        {"image": png("v2.png", 2), "label": 1, "patient_id": None},  # same bytes as t2.png
        {"image": png("v3.png", 4), "label": 1, "patient_id": "p3"},  # same size, other bytes
    ]
    report = audit_leakage(train, val)
    assert not report.ok
    assert report.patient_overlap == ["p1"]
    assert report.duplicate_images == [(train[1]["image"], val[1]["image"])]
    assert "1 patient(s)" in report.summary() and "1 byte-identical" in report.summary()
    assert "p1" not in report.summary() and "p1" not in json.dumps(report.to_dict(str(tmp_path)))
    assert audit_leakage(train[:1], val[2:]).ok


def test_bad_arguments(radiography):
    with pytest.raises(DatasetError, match="val_fraction"):
        make_split(radiography, val_fraction=1.5)
    with pytest.raises(DatasetError, match="fold must be in 0..2"):
        make_split(radiography, folds=3, fold=3)
    tiny = [{"image": f"/x/{n}.png", "label": n % 2, "label_name": "ab"[n % 2], "patient_id": None} for n in range(3)]
    with pytest.raises(DatasetError, match=r"class\(es\) \[1\] have only 1"):
        make_split(tiny)


def test_tiny_dataset_falls_back_to_two_parts_and_says_so():
    tiny = [{"image": f"/x/{n}.png", "label": n % 2, "label_name": "ab"[n % 2], "patient_id": None} for n in range(6)]
    split = make_split(tiny)
    assert len(split.test) == 0 and len(split.train) == 4 and len(split.val) == 2
    assert split.manifest["test_fraction"] == 0.0 and split.manifest["test_fraction_requested"] == 0.2
    assert "no test part" in split.manifest["test_note"]
    with pytest.raises(DatasetError, match="val_fraction \\+ test_fraction below 1"):
        make_split(tiny, val_fraction=0.5, test_fraction=0.5)


def test_manifest_round_trip_keeps_the_test_part(tmp_path, radiography):
    split = make_split(radiography, seed=2)
    path = split.save(tmp_path / "split.json")
    again = load_split(path, radiography)
    assert _names(again.test) == _names(split.test) and len(again.test) == 20
    old = json.loads(path.read_text())  # a manifest written before test parts existed
    for key in ("test", "test_fraction", "test_note", "test_fraction_requested"):
        old.pop(key)
    old["counts"].pop("test")
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_split(tmp_path / "old.json", radiography).test == []


def test_a_csv_naming_images_elsewhere_gives_a_manifest_that_stays_inside_its_root(tmp_path):
    """`cxrkit review export --studies` writes absolute paths: the manifest's root is then the images' folder."""
    from cxrkit.data.manifest import read_manifest

    images = shared_data("radiography", "COVID-19_Radiography_Dataset")
    reviews = tmp_path / "reviews"
    reviews.mkdir()
    with (reviews / "reviews.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "label"])
        for cls in ("COVID", "Normal"):
            for path in sorted((images / cls).glob("*.png"))[:6]:
                writer.writerow([str(path), cls])
    spec = load_dataset("csv", reviews)
    split = make_split(spec, seed=0)
    path = split.save(tmp_path / "run" / "split.json")
    manifest = read_manifest(path, spec.classes).data
    assert Path(manifest["root"]) == images
    assert all(not e["image"].startswith("..") for e in manifest["train"] + manifest["val"] + manifest["test"])
    again = load_split(path, spec)
    assert [i["image"] for i in again.train] == [i["image"] for i in split.train]
