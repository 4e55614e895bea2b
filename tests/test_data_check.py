"""Bad input: corrupt, truncated and non-image files; check_images; the ``cxrkit data`` command."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data import BadImageError, BadImagesError, load_image
from cxrkit.data.check import check_image, check_images
from support.paths import shared_data


def _good_png(path: Path, value: int = 50) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.full((32, 32), value, np.uint8)
    pixels[::3] = 200
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def bad_files(tmp_path):
    """name -> (path, words the reason must contain)."""
    png = _good_png(tmp_path / "src.png").read_bytes()
    jpeg_src = next(shared_data("coronahack").rglob("*.jpeg")).read_bytes()
    dcm_src = shared_data("dicom", "nih-cxr-dx-monochrome2.dcm").read_bytes()
    files = {
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "truncated.jpeg": (jpeg_src[: len(jpeg_src) // 2], "truncated"),
        "random.png": (np.random.default_rng(0).bytes(3000), "not an image format"),
        "empty.png": (b"", "empty file"),
        "notes.dcm": (b"patient notes, not an image\n" * 20, "not a DICOM image"),
        "truncated.dcm": (dcm_src[: len(dcm_src) // 2], "truncated DICOM"),
    }
    out = {}
    for name, (data, words) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, words)
    return out


def test_every_bad_file_gives_an_error_naming_it(bad_files):
    for name, (path, words) in bad_files.items():
        with pytest.raises(BadImageError) as err:
            check_image(path)
        assert err.value.path == str(path) and name in str(err.value)
        assert words in err.value.reason, (name, err.value.reason)
        with pytest.raises(BadImageError) as err:
            load_image(path)  # the reading path too, never a bare PIL / pydicom traceback
        assert name in str(err.value)


def test_real_samples_pass_the_check():
    files = [shared_data("dicom", "CR-MONO1-10-chest"), shared_data("dicom", "nih-cxr-dx-monochrome2.dcm")]
    files += sorted(shared_data("cohen", "images").iterdir())
    result = check_images(files, progress=False, workers=2)
    assert result.ok and len(result.good) == len(files)


def test_check_images_raises_one_error_listing_all(bad_files, tmp_path):
    good = {"image": str(_good_png(tmp_path / "good.png")), "label": 0}
    items = [good] + [{"image": str(p), "label": 1} for p, _ in bad_files.values()]
    with pytest.raises(BadImagesError) as err:
        check_images(items, progress=False)
    msg = str(err.value)
    assert f"{len(bad_files)} of {len(items)} image files cannot be read" in msg
    assert all(name in msg for name in bad_files) and "--skip_bad_images" in msg
    assert len(err.value.bad) == len(bad_files)


def test_skip_bad_counts_and_returns_them(bad_files, tmp_path, caplog):
    good = [{"image": str(_good_png(tmp_path / f"g{n}.png", n)), "label": 0} for n in range(3)]
    items = good[:2] + [{"image": str(p), "label": 1} for p, _ in bad_files.values()] + good[2:]
    with caplog.at_level("WARNING", logger="cxrkit.data.check"):
        result = check_images(items, skip_bad=True, progress=False)
    assert result.good == good  # order kept
    assert sorted(Path(p).name for p, _ in result.bad) == sorted(bad_files)
    assert f"left out {len(bad_files)} of" in caplog.text
    assert "unreadable" in result.summary()


# -- CLI --------------------------------------------------------------------------------------
def test_cli_check_radiography(capsys):
    root = shared_data("radiography")
    rc = main(["data", "check", "radiography", str(root), "--task", "three_class", "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "unreadable images: none" in out and "leakage audit: OK" in out
    lines = {line.split()[0]: line.split()[-4:] for line in out.splitlines() if line.startswith(("COVID", "total"))}
    assert lines["COVID"] == ["24", "8", "8", "40"] and lines["total"] == ["60", "20", "20", "100"]
    assert "near-duplicates (perceptual hash, <= 24 of 256 bits): 0 pair(s) across parts, 0 across classes" in out


def test_cli_reports_unreadable_files_and_leakage(tmp_path, capsys):
    root = tmp_path / "ds"
    for n in range(10):
        shutil.copy(_good_png(tmp_path / "same.png"), _good_png(root / "a" / f"a{n}.png"))  # identical bytes
        _good_png(root / "b" / f"b{n}.png", 10 + n)
    (root / "b" / "b9.png").write_bytes(b"")
    rc = main(["data", "check", "folder", str(root), "--no_progress", "--save_split", str(tmp_path / "s.json"),
               "--no_near_duplicates", "--test_fraction", "0"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "unreadable images: 1" in out and "b9.png: empty file" in out
    assert "LEAK" in out and "byte-identical" in out and "near-duplicates: not checked" in out
    assert (tmp_path / "s.json").is_file()
    # with the perceptual hashes (the default), copies of one picture form one group and stay in one part
    rng = np.random.default_rng(0)
    other = tmp_path / "other"
    for cls in ("a", "b"):
        (other / cls).mkdir(parents=True)
        for n in range(10):
            Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(other / cls / f"{cls}{n}.png")
    for n in range(1, 5):
        shutil.copy(other / "a" / "a0.png", other / "a" / f"a{n}.png")
    rc = main(["data", "check", "folder", str(other), "--no_progress", "--test_fraction", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "leakage audit: OK" in out and "1 group(s) of copies kept in one part" in out
    # the stripes of the first set are all one picture to a perceptual hash: the error says so
    assert main(["data", "check", "folder", str(root), "--no_progress"]) == 1
    assert "near-duplicate" in capsys.readouterr().err


def test_cli_missing_files_and_options(tmp_path, capsys):
    root = shared_data("coronahack")
    assert main(["data", "check", "coronahack", str(root), "--no_progress"]) == 1
    assert "have no image file" in capsys.readouterr().err
    rc = main(["data", "check", "coronahack", str(root), "--allow_missing", "--use_predefined", "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "image file missing: 5862" in out and "predefined" in out
    rc = main(["data", "check", "cohen", str(shared_data("cohen")), "--views", "PA", "--no_progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "view AP not selected" in out
    assert main(["data", "check", "cohen", str(shared_data("cohen")), "--colour", "red"]) == 1
    assert "unknown option(s) colour" in capsys.readouterr().err


def test_cli_tasks(capsys):
    assert main(["data", "tasks", "radiography"]) == 0
    out = capsys.readouterr().out
    assert "covid_vs_normal (default)" in out and "four_class" in out and "--seed" in out
    assert main(["data", "tasks"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("cohen:", "coronahack:", "csv:", "folder:", "radiography:"))
