"""Dataset adapters on the real samples in ../shared/data and on layouts built in tmp_path."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.data import DatasetError, DatasetSpec, load_dataset
from cxrkit.data.adapter import DatasetAdapter
from cxrkit.data.cohen import finding_category
from cxrkit.data.coronahack import patient_from_name
from cxrkit.registry import datasets
from support.paths import shared_data

RADIOGRAPHY_CLASSES = ("COVID", "Normal", "Viral Pneumonia")


def _png(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, np.uint8)).save(path)
    return path


def _check_items(spec: DatasetSpec) -> None:
    for item in spec.items:
        assert os.path.isabs(item["image"]) and os.path.isfile(item["image"])
        assert item["label_name"] == spec.classes[item["label"]]
        assert "patient_id" in item


# -- registry ---------------------------------------------------------------------------------
def test_registry_has_every_builtin_adapter():
    for name in ("radiography", "coronahack", "cohen", "folder", "csv"):
        adapter = datasets.get(name)
        assert isinstance(adapter, DatasetAdapter)
        assert adapter.name == name and adapter.default_task in adapter.tasks and adapter.description


def test_unknown_task_and_option_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown task 'five_class'.*covid_vs_normal"):
        load_dataset("radiography", tmp_path, task="five_class")
    with pytest.raises(DatasetError, match="unknown option.*colour"):
        load_dataset("radiography", tmp_path, colour=True)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cohen", tmp_path / "nowhere")


# -- radiography ------------------------------------------------------------------------------
def test_radiography_real_sample_counts():
    root = shared_data("radiography")
    spec = load_dataset("radiography", root, task="three_class")  # root is the parent of the dataset folder
    assert spec.classes == list(RADIOGRAPHY_CLASSES)
    assert spec.class_counts() == {"COVID": 40, "Normal": 40, "Viral Pneumonia": 20}
    assert Path(spec.root).name == "COVID-19_Radiography_Dataset"
    assert all(i["patient_id"] is None for i in spec.items)
    _check_items(spec)


def test_radiography_covid_vs_normal_is_balanced_and_seeded(tmp_path):
    base = tmp_path / "COVID-19_Radiography_Dataset"
    for i in range(1, 6):
        _png(base / "COVID" / f"COVID-{i}.png")
    for i in range(1, 21):
        _png(base / "Normal" / f"Normal-{i}.png")
    a = load_dataset("radiography", tmp_path, seed=1)
    b = load_dataset("radiography", tmp_path, seed=1)
    c = load_dataset("radiography", tmp_path, seed=2)
    assert a.task == "covid_vs_normal" and a.classes == ["COVID", "Normal"]
    assert a.class_counts() == {"COVID": 5, "Normal": 5}
    assert [i["image"] for i in a.items] == [i["image"] for i in b.items]
    assert {i["image"] for i in a.items} != {i["image"] for i in c.items}
    (reason,) = [r for r in a.excluded if r.startswith("Normal not in the balanced subset")]
    assert len(a.excluded[reason]) == 15
    assert load_dataset("radiography", tmp_path, balance=False).class_counts()["Normal"] == 20


def test_radiography_nested_layout_with_masks_and_xlsx(tmp_path):
    real = shared_data("radiography", "COVID-19_Radiography_Dataset")
    base = tmp_path / "download" / "COVID-19_Radiography_Dataset"
    for cls in RADIOGRAPHY_CLASSES:
        for src in sorted((real / cls).iterdir())[:4]:
            (base / cls / "images").mkdir(parents=True, exist_ok=True)
            (base / cls / "images" / src.name).symlink_to(src)
            _png(base / cls / "masks" / src.name, 255)
        (base / f"{cls}.metadata.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    (base / "README.md.txt").write_text("readme")
    spec = load_dataset("radiography", tmp_path, task="three_class")  # two levels above the dataset
    assert spec.class_counts() == {c: 4 for c in RADIOGRAPHY_CLASSES}
    assert not any("/masks/" in i["image"] for i in spec.items)
    assert all(Path(i["image"]).parent.name == "images" for i in spec.items)
    assert spec.excluded == {}
    _check_items(spec)


def test_radiography_missing_class_names_folder_and_found(tmp_path):
    root = shared_data("radiography")
    with pytest.raises(DatasetError) as err:
        load_dataset("radiography", root, task="four_class")
    msg = str(err.value)
    assert "Lung_Opacity" in msg and "COVID, Normal, Viral Pneumonia" in msg
    with pytest.raises(DatasetError, match="no class folder"):
        load_dataset("radiography", tmp_path)


def test_radiography_first_release_folder_names(tmp_path):
    base = tmp_path / "COVID-19 Radiography Database"
    _png(base / "COVID-19" / "COVID-19 (1).png")
    _png(base / "NORMAL" / "NORMAL (1).png")
    _png(base / "Viral Pneumonia" / "Viral Pneumonia (1).png")
    spec = load_dataset("radiography", tmp_path, task="three_class")
    assert spec.class_counts() == {c: 1 for c in RADIOGRAPHY_CLASSES}


# -- coronahack -------------------------------------------------------------------------------
def _coronahack_present(root: Path) -> list[dict]:
    base = root / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset"
    with open(root / "Chest_xray_Corona_Metadata.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5910
    return [r for r in rows if (base / r["Dataset_type"].lower() / r["X_ray_image_name"]).is_file()]


def test_coronahack_real_sample_with_allow_missing():
    root = shared_data("coronahack")
    present = _coronahack_present(root)
    assert len(present) == 48
    spec = load_dataset("coronahack", root, task="normal_vs_pneumonia", allow_missing=True)
    assert len(spec.items) == 48
    assert len(spec.excluded["image file missing"]) == 5910 - 48
    assert spec.class_counts()["Normal"] == sum(r["Label"] == "Normal" for r in present)
    covid = load_dataset("coronahack", root, task="covid_vs_rest", allow_missing=True)
    assert covid.class_counts()["COVID-19"] == sum(r["Label_2_Virus_category"] == "COVID-19" for r in present)
    by_name = {Path(i["image"]).name: i for i in spec.items}
    for row in present:
        assert by_name[row["X_ray_image_name"]]["split"] == row["Dataset_type"].lower()
    assert by_name["person83_bacteria_407.jpeg"]["patient_id"] == "person83"
    assert by_name["IM-0293-0001.jpeg"]["patient_id"] == "IM-0293"
    assert by_name["D5ACAA93-C779-4E22-ADFA-6A220489F840.jpeg"]["patient_id"] is None
    _check_items(spec)


def test_coronahack_three_class_uses_label_1(tmp_path):
    root = shared_data("coronahack")
    present = _coronahack_present(root)
    spec = load_dataset("coronahack", root, task="three_class", allow_missing=True)
    kinds = Counter(r["Label_1_Virus_category"] for r in present)
    assert spec.class_counts() == {"Normal": kinds[""], "Bacterial": kinds["bacteria"], "Viral": kinds["Virus"]}


def test_coronahack_missing_files_is_an_error_listing_them():
    root = shared_data("coronahack")
    with pytest.raises(DatasetError) as err:
        load_dataset("coronahack", root)
    msg = str(err.value)
    assert "5862 of 5910 rows" in msg and "IM-0128-0001.jpeg" in msg and "allow_missing" in msg


def test_coronahack_single_nesting(tmp_path):
    real = shared_data("coronahack")
    (tmp_path / "Chest_xray_Corona_Metadata.csv").symlink_to(real / "Chest_xray_Corona_Metadata.csv")
    inner = real / "Coronahack-Chest-XRay-Dataset" / "Coronahack-Chest-XRay-Dataset"
    (tmp_path / "Coronahack-Chest-XRay-Dataset").mkdir()
    for split in ("train", "test"):
        (tmp_path / "Coronahack-Chest-XRay-Dataset" / split).symlink_to(inner / split)
    spec = load_dataset("coronahack", tmp_path, allow_missing=True)
    assert len(spec.items) == 48


def test_patient_from_kermany_names():
    assert patient_from_name("person1650_virus_2852.jpeg") == "person1650"
    assert patient_from_name("NORMAL2-IM-1427-0001.jpeg") == "NORMAL2-IM-1427"
    assert patient_from_name("1312A392-67A3-4EBF-9319-810CF6DA5EF6.jpeg") is None


# -- cohen ------------------------------------------------------------------------------------
def _cohen_rows(root: Path) -> list[dict]:
    with open(root / "metadata.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_cohen_real_sample_xray_rows_only():
    root = shared_data("cohen")
    rows = _cohen_rows(root)
    assert len(rows) == 751 and len(os.listdir(root / "images")) == 50
    with_image = [r for r in rows if (root / "images" / r["filename"]).is_file()]
    assert len(with_image) == 50
    xray = [r for r in with_image if r["modality"] == "X-ray"]
    assert len(xray) == 47
    views = "PA,AP,AP Supine,L"
    spec = load_dataset("cohen", root, task="covid_vs_rest", views=views)
    expected = [
        r for r in xray if r["view"] in views.split(",") and r["finding"] != "todo"
    ]
    assert sorted(Path(i["image"]).name for i in spec.items) == sorted(r["filename"] for r in expected)
    assert spec.class_counts()["COVID-19"] == sum(r["finding"].startswith("COVID-19") for r in expected)
    by_name = {Path(i["image"]).name: i for i in spec.items}
    for row in expected:
        assert by_name[row["filename"]]["patient_id"] == row["patientid"]
    assert "finding not labelled yet (todo)" in spec.excluded
    assert any(r.startswith("not an X-ray") for r in spec.excluded)
    _check_items(spec)


def test_cohen_default_views_and_tasks():
    root = shared_data("cohen")
    rows = [r for r in _cohen_rows(root) if (root / "images" / r["filename"]).is_file()]
    spec = load_dataset("cohen", root)
    assert spec.task == "covid_vs_rest"
    names = {Path(i["image"]).name for i in spec.items}
    view_of = {r["filename"]: r["view"] for r in rows}
    assert names and all(view_of[n] in {"PA", "AP", "AP Supine"} for n in names)
    normal = load_dataset("cohen", root, task="covid_vs_normal")
    assert normal.class_counts()["No Finding"] == sum(
        r["finding"] == "No Finding" and r["modality"] == "X-ray" and r["view"] in {"PA", "AP", "AP Supine"}
        for r in rows
    )
    three = load_dataset("cohen", root, task="three_class")
    assert three.classes == ["COVID-19", "Other pneumonia", "No Finding"]


@pytest.mark.parametrize(
    "finding, category",
    [
        ("COVID-19", "covid"), ("COVID-19, ARDS", "covid"), ("Pneumonia/Viral/COVID-19", "covid"),
        ("Streptococcus", "pneumonia"), ("Pneumonia/Bacterial/Streptococcus", "pneumonia"),
        ("Pneumonia/Fungal/Pneumocystis", "pneumonia"), ("SARS", "pneumonia"), ("No Finding", "no_finding"),
        ("todo", "todo"), ("", "todo"), ("ARDS", "other"),
    ],
)
def test_cohen_findings_of_both_schemas(finding, category):
    assert finding_category(finding) == category


def test_cohen_newer_schema_and_shared_file_merges_patients(tmp_path):
    header = ["patientid", "offset", "finding", "RT_PCR_positive", "view", "modality", "folder", "filename"]
    rows = [
        ["1", "0", "Pneumonia/Viral/COVID-19", "Y", "PA", "X-ray", "images", "a.png"],
        ["1", "3", "Pneumonia/Viral/COVID-19", "Y", "AP Supine", "X-ray", "images", "b.png"],
        ["2", "0", "Pneumonia/Bacterial/Klebsiella", "", "PA", "X-ray", "images", "c.png"],
        ["3", "0", "Pneumonia/Bacterial/Klebsiella", "", "PA", "X-ray", "images", "c.png"],  # same file, 2 ids
        ["3", "5", "No Finding", "", "PA", "X-ray", "images", "d.png"],
        ["4", "0", "todo", "", "PA", "X-ray", "images", "e.png"],
        ["5", "0", "Pneumonia/Viral/COVID-19", "Y", "Axial", "CT", "volumes", "f.nii.gz"],
        ["6", "0", "Pneumonia/Viral/COVID-19", "Y", "PA", "X-ray", "images", "gone.png"],
    ]
    with open(tmp_path / "metadata.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([header, *rows])
    for name in "abcde":
        _png(tmp_path / "images" / f"{name}.png")
    spec = load_dataset("cohen", tmp_path, task="three_class")
    got = {Path(i["image"]).name: (i["label_name"], i["patient_id"]) for i in spec.items}
    assert got == {
        "a.png": ("COVID-19", "1"),
        "b.png": ("COVID-19", "1"),
        "c.png": ("Other pneumonia", "2"),
        "d.png": ("No Finding", "2"),  # patient 3 shares c.png with patient 2: one group
    }
    assert spec.excluded["finding not labelled yet (todo)"] == ["e.png"]
    assert spec.excluded["image file missing"] == ["gone.png"]
    assert spec.excluded["listed twice in metadata.csv"] == ["c.png"]
    with pytest.raises(DatasetError, match="1 selected rows.*gone.png"):
        load_dataset("cohen", tmp_path, allow_missing=False)


# -- generic ----------------------------------------------------------------------------------
def test_folder_adapter(tmp_path):
    _png(tmp_path / "sick" / "person1_a.png")
    _png(tmp_path / "sick" / "sub" / "person1_b.png")
    _png(tmp_path / "sick" / "masks" / "person1_a.png")
    _png(tmp_path / "well" / "person2_a.png")
    (tmp_path / "well" / "notes.txt").write_text("x")
    spec = load_dataset("folder", tmp_path, patient_regex=r"^(person\d+)_")
    assert spec.classes == ["sick", "well"]
    assert spec.class_counts() == {"sick": 2, "well": 1}
    assert {i["patient_id"] for i in spec.items} == {"person1", "person2"}
    assert load_dataset("folder", tmp_path, classes="well,sick").classes == ["well", "sick"]
    with pytest.raises(DatasetError, match="ill.*not found.*found: sick, well"):
        load_dataset("folder", tmp_path, classes=["ill"])


def test_csv_adapter_paths_patients_splits_and_missing(tmp_path):
    _png(tmp_path / "img" / "1.png")
    _png(tmp_path / "img" / "2.png")
    _png(tmp_path / "img" / "3.png")
    table = tmp_path / "meta" / "labels.csv"
    table.parent.mkdir()
    table.write_text(
        "file,dx,pid,fold\nimg/1.png,covid,p1,train\nimg/2.png,normal,p1,train\n"
        "img/3.png,normal,p2,test\nimg/4.png,covid,p3,test\n"
    )
    opts = dict(path_column="file", label_column="dx", patient_column="pid", split_column="fold")
    with pytest.raises(DatasetError, match="1 rows .* img/4.png"):
        load_dataset("csv", table, image_root="..", **opts)
    spec = load_dataset("csv", table, image_root="..", allow_missing=True, **opts)
    assert spec.classes == ["covid", "normal"]
    assert [(Path(i["image"]).name, i["label"], i["patient_id"], i["split"]) for i in spec.items] == [
        ("1.png", 0, "p1", "train"), ("2.png", 1, "p1", "train"), ("3.png", 1, "p2", "test"),
    ]
    assert spec.excluded["image file missing"] == ["img/4.png"]
    with pytest.raises(DatasetError, match="lacks the column.*dx.*file, label"):
        (tmp_path / "other.csv").write_text("file,label\nimg/1.png,a\n")
        load_dataset("csv", tmp_path / "other.csv", path_column="file", label_column="dx")
