"""The three ways to predict give the same probabilities on the same images.

``cxrkit run inference`` (the bundle's inference config, MONAI's evaluator),
``cxrkit predict`` / :func:`cxrkit.api.predict` (the :class:`~cxrkit.serve.Predictor`)
and the MONAI Label infer task (``cxrkit/label/app/lib/infers.py``) read a folder
holding PNG, JPEG, DICOM with and without a suffix; they must find the same
files and answer within float tolerance (batch composition may differ).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from support.gpu import requires_cuda
from support.paths import RADIOGRAPHY, shared_data

from cxrkit.api import predict
from cxrkit.cli import main

CORONAHACK_TEST = ("coronahack", "Coronahack-Chest-XRay-Dataset", "Coronahack-Chest-XRay-Dataset", "test")


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """A folder of real radiographs in four formats, copied (not linked) so every path resolves to itself."""
    folder = tmp_path_factory.mktemp("studies").resolve()
    for cls in ("COVID", "Normal"):
        shutil.copy(sorted(shared_data(*RADIOGRAPHY, cls).glob("*.png"))[0], folder)
    shutil.copy(sorted(shared_data(*CORONAHACK_TEST).glob("*.jpeg"))[0], folder)
    shutil.copy(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"), folder / "dx.dcm")
    (folder / "scans").mkdir()
    shutil.copy(shared_data("dicom", "CR-MONO1-10-chest"), folder / "scans" / "CR-MONO1-10-chest")  # no suffix
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def predicted(tiny_run, studies) -> dict[str, list[float]]:
    result = predict(tiny_run, [studies], device="cpu", batch_size=2)
    assert not result.failures and result.classes == ["COVID", "Normal"]
    return {p.file: [p.probabilities[c] for c in result.classes] for p in result.predictions}


def test_run_inference_and_predict_give_the_same_probabilities(tiny_run, studies, predicted, tmp_path):
    out = tmp_path / "predictions.csv"
    assert main(["run", "inference", str(tiny_run), "--input", str(studies), "--output_file", str(out),
                 "--batch_size", "3", "--device", "cpu"]) == 0
    with out.open(newline="") as fh:
        rows = {r["image"]: [float(r["prob_0"]), float(r["prob_1"])] for r in csv.DictReader(fh)}
    assert len(predicted) == 5 and str(studies / "scans" / "CR-MONO1-10-chest") in predicted
    assert set(rows) == set(predicted)  # the same files, the suffix-less DICOM included, notes.txt left out
    for file, probs in predicted.items():
        assert rows[file] == pytest.approx(probs, abs=1e-5), file


def test_monai_label_infer_task_gives_the_same_probabilities(tiny_run, predicted):
    pytest.importorskip("monailabel", reason="MONAI Label is not installed: pip install -e \".[label]\"")
    from cxrkit.label.app.lib.infers import CXRClassificationInfer

    task = CXRClassificationInfer(str(tiny_run), {})
    for file, probs in predicted.items():
        _, answer = task({"image": file, "device": "cpu"})
        assert [p["score"] for p in answer["prediction"]] == pytest.approx(probs, abs=1e-5), file


@pytest.mark.gpu
@requires_cuda
def test_on_a_gpu_run_inference_and_predict_agree_under_mixed_precision(tiny_run, studies, tmp_path):
    """On CUDA both paths run the network under the config's autocast (``amp: auto``) and take the softmax in
    float32, so they agree as closely as on the CPU (measured on an H100: 3e-8)."""
    out = tmp_path / "predictions.csv"
    assert main(["run", "inference", str(tiny_run), "--input", str(studies), "--output_file", str(out),
                 "--batch_size", "2", "--device", "cuda"]) == 0
    with out.open(newline="") as fh:
        rows = {r["image"]: [float(r["prob_0"]), float(r["prob_1"])] for r in csv.DictReader(fh)}
    result = predict(tiny_run, [studies], device="cuda", batch_size=2)
    assert set(rows) == {p.file for p in result.predictions}
    for p in result.predictions:
        assert rows[p.file] == pytest.approx([p.probabilities[c] for c in result.classes], abs=1e-5), p.file
