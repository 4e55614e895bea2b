"""``cxrkit predict``: probabilities from a trained run folder on PNG/JPEG/DICOM/NIfTI, bad files, Grad-CAM.

A tiny run (32 px, 1 epoch, 40 real radiographs) is trained once per session
(:func:`tiny_run`, also used by ``test_export.py`` and ``test_label_server.py``).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from cxrkit.cli import main
from cxrkit.serve import GradCAMExplainer, ModelLoadError, cam_to_image, load_model, predict_files
from support.paths import REPO, shared_data

RADIOGRAPHY = ("radiography", "COVID-19_Radiography_Dataset")
CORONAHACK_TEST = ("coronahack", "Coronahack-Chest-XRay-Dataset", "Coronahack-Chest-XRay-Dataset", "test")


@pytest.fixture(scope="session")
def tiny_model(tiny_run):
    return load_model(tiny_run, device="cpu")


def _sample_files(tmp_path: Path) -> dict[str, Path]:
    """One file per format, copied (never into the repository) under neutral names."""
    covid = sorted(shared_data(*RADIOGRAPHY, "COVID").glob("*.png"))[0]
    jpeg = sorted(shared_data(*CORONAHACK_TEST).glob("*.jpeg"))[0]
    files = {
        "png": covid,
        "jpeg": jpeg,
        "dicom": tmp_path / "scan.dcm",
        "bare_dicom": shared_data("dicom", "CR-MONO1-10-chest"),
        "nifti": tmp_path / "volume.nii.gz",
    }
    shutil.copy(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"), files["dicom"])
    pixels = np.asarray(Image.open(covid).convert("L"), dtype=np.float32)
    nib.save(nib.Nifti1Image(pixels.T.copy(), np.eye(4)), files["nifti"])  # NIfTI x = columns
    return files


def test_predict_cli_json_all_formats_and_a_bad_file(tiny_run, tmp_path, capsys):
    files = _sample_files(tmp_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    rc = main(["predict", str(tiny_run), *map(str, files.values()), str(bad), "--json", "--device", "cpu"])
    captured = capsys.readouterr()
    assert rc == 1  # one file could not be read: non-zero exit, the others are still predicted
    out = json.loads(captured.out)
    assert out["classes"] == ["COVID", "Normal"]
    assert [p["file"] for p in out["predictions"]] == list(map(str, files.values()))
    for p in out["predictions"]:
        assert set(p["probabilities"]) == {"COVID", "Normal"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
        assert p["probability"] == p["probabilities"][p["label"]]
    assert [f["file"] for f in out["failures"]] == [str(bad)]
    assert "not an image format" in out["failures"][0]["reason"]
    assert f"skipped {bad}" in captured.err and "1 of 6 inputs" in captured.err
    # no patient identifier of the DICOM file reaches the output
    assert "Covid0000" not in captured.out + captured.err


def test_predict_matches_the_runs_own_validation_predictions(tiny_run, tiny_model):
    """The config-built preprocessing and model.pt reproduce what the training engine wrote."""
    rows = list(csv.DictReader((tiny_run / "predictions.csv").open()))
    root = shared_data("radiography")
    files = [str(root / r["image"]) for r in rows]
    result = predict_files(tiny_model, files, batch_size=3, progress=False)
    assert not result.failures and len(result.predictions) == len(rows)
    for row, pred in zip(rows, result.predictions):
        expected = [float(row["prob_0"]), float(row["prob_1"])]
        assert [pred.probabilities["COVID"], pred.probabilities["Normal"]] == pytest.approx(expected, abs=1e-4)
        assert pred.index == int(row["pred"])
    again = predict_files(tiny_model, files[:4], batch_size=1, progress=False)
    for a, b in zip(again.predictions, result.predictions):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-5)  # batching changes nothing


def test_predict_table_folder_and_grad_cam_overlays(tiny_run, tmp_path, capsys):
    folder = tmp_path / "studies"
    folder.mkdir()
    for png in sorted(shared_data(*RADIOGRAPHY, "Normal").glob("*.png"))[:2]:
        (folder / png.name).symlink_to(png)
    shutil.copy(shared_data("dicom", "CR-MONO1-10-chest"), folder / "CR-MONO1-10-chest")  # DICOM without suffix
    (folder / "notes.txt").write_text("not an image")  # ignored inside a folder
    cams = tmp_path / "cams"
    rc = main(["predict", str(tiny_run), str(folder), "--cam", str(cams), "--batch_size", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["file", "prediction", "probability", "p(COVID)", "p(Normal)"]
    assert lines[-1] == f"Grad-CAM overlays in {cams}" and "notes.txt" not in out
    assert sorted(line.split()[0].rsplit("/", 1)[-1] for line in lines[2:5]) == sorted(
        [p.name for p in folder.iterdir() if p.name != "notes.txt"])
    written = sorted(p.name for p in cams.glob("*.png"))
    assert len(written) == 3 and "CR-MONO1-10-chest_cam.png" in written
    overlay = Image.open(cams / "CR-MONO1-10-chest_cam.png")
    title = overlay.info["Title"]
    assert title.startswith("CR-MONO1-10-chest: ") and ("COVID (p = 0." in title or "Normal (p = 0." in title)
    assert overlay.size[0] > 300  # a figure, not the 32 px network input


def test_grad_cam_is_monai_grad_cam_per_image_and_leaves_the_model_alone():
    """MONAI GradCAM on the backbone's last stage, one class per image; no hooks left on the model.

    With a linear head the Grad-CAM map is known in closed form: relu(sum_k W[c, k] * A_k),
    upsampled and scaled to [0, 1].
    """
    from cxrkit.networks.classifier import CXRClassifier

    torch.manual_seed(0)
    net = CXRClassifier("random", 2, head="linear", pretrained=False).eval()
    explainer = GradCAMExplainer(net)
    assert explainer.target_layer == "backbone.layer4"
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # 64 px: a 2x2 layer4 map
    classes = [0, 1, 0]
    maps = explainer(x, classes)
    assert maps.shape == (3, 64, 64) and maps.min() >= 0.0 and maps.max() == pytest.approx(1.0)
    features = {}
    hook = net.backbone.layer4.register_forward_hook(lambda m, i, o: features.__setitem__("a", o))
    with torch.no_grad():
        net(x)
    hook.remove()
    weight = net.head[0].weight.detach()
    for i, c in enumerate(classes):
        small = torch.relu(torch.einsum("k,khw->hw", weight[c], features["a"][i]))
        big = torch.nn.functional.interpolate(small[None, None], size=(64, 64), mode="bilinear",
                                              align_corners=False)[0, 0]
        expected = (big - big.min()) / (big.max() - big.min())
        np.testing.assert_allclose(maps[i], expected.numpy(), atol=1e-4)
    np.testing.assert_allclose(explainer(x[1:2], [1])[0], maps[1], atol=1e-5)
    assert not np.allclose(maps[1], explainer(x[1:2], [0])[0], atol=1e-3)  # the class asked for matters
    layer4 = net.backbone.layer4
    assert not layer4._forward_hooks and not layer4._backward_hooks  # MONAI hooked a private copy


def test_cam_to_image_undoes_resize_and_centre_crop():
    from monai.transforms import CenterSpatialCropd, Compose, Resized

    crop = Compose([Resized(keys="image", spatial_size=(8, 8)), CenterSpatialCropd(keys="image", roi_size=(4, 4))])
    mapped = cam_to_image(np.ones((4, 4), dtype=np.float32), crop, (16, 32))
    assert mapped.shape == (16, 32)
    assert mapped[8, 16] == pytest.approx(1.0) and mapped[0, 0] == pytest.approx(0.0)  # nothing outside the crop
    plain = Compose([Resized(keys="image", spatial_size=(4, 4))])
    assert cam_to_image(np.ones((4, 4), dtype=np.float32), plain, (10, 6)) == pytest.approx(np.ones((10, 6)))


def test_model_errors_name_the_file_and_the_fix(tiny_run, tmp_path, capsys):
    with pytest.raises(ModelLoadError, match="no trained model.*cxrkit run training"):
        load_model(REPO / "bundles" / "inat_swav")  # a bundle trains; its run folder predicts
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_model(tmp_path / "missing")
    # weights of another head do not fit the network the config builds
    broken = tmp_path / "broken_run"
    shutil.copytree(tiny_run / "configs", broken / "configs")
    (broken / "models").mkdir()
    state = torch.load(tiny_run / "models" / "model.pt", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    torch.save(state, broken / "models" / "model.pt")
    with pytest.raises(ModelLoadError, match=r"broken_run/models/model.pt: the weights do not fit"):
        load_model(broken)
    # a pickled object is refused unless trusted
    torch.save({"model": object()}, broken / "models" / "model.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(ModelLoadError, match="weights_only=True.*--trust"):
        load_model(broken)
    assert main(["predict", str(broken), "x.png"]) == 1
    assert "cxrkit predict: error:" in capsys.readouterr().err
