"""``cxrkit export``: TorchScript through MONAI's ckpt_export; the exported model predicts like model.pt."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrkit.cli import main
from cxrkit.serve import ModelLoadError, load_model, predict_files
from cxrkit.serve.export import monai_command
from support.paths import REPO, shared_data


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:  # noqa: F811 - the imported fixture
    """The trained run's configs and best model, copied so exports do not touch the shared run."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run / "configs", run / "configs")
    (run / "models").mkdir()
    shutil.copy(tiny_run / "models" / "model.pt", run / "models" / "model.pt")
    return run


def _images() -> list[str]:
    normal = sorted(shared_data("radiography", "COVID-19_Radiography_Dataset", "Normal").glob("*.png"))[:3]
    return [*map(str, normal), str(shared_data("dicom", "nih-cxr-dx-monochrome2.dcm"))]


def test_export_cli_and_predictions_agree(run_copy, tmp_path, capsys):
    assert main(["export", str(run_copy)]) == 0
    out = capsys.readouterr().out
    ts = run_copy / "models" / "model.ts"
    assert ts.is_file() and f"wrote {ts} (torch.jit.script)" in out
    assert "outputs match models/model.pt" in out and "python -m monai.bundle ckpt_export network_def" in out
    images = _images()
    original = predict_files(load_model(run_copy, device="cpu"), images, progress=False)
    exported_model = load_model(ts, device="cpu")
    assert exported_model.kind == "torchscript" and exported_model.bundle_root == run_copy.resolve()
    exported = predict_files(exported_model, images, progress=False)
    a = np.array([[p.probabilities[c] for c in original.classes] for p in original.predictions])
    b = np.array([[p.probabilities[c] for c in exported.classes] for p in exported.predictions])
    assert a.shape == (4, 2)
    np.testing.assert_allclose(b, a, atol=1e-5)

    # the .ts file alone: classes and preprocessing from the metadata MONAI embedded in it
    alone = tmp_path / "elsewhere" / "chestxray.ts"
    alone.parent.mkdir()
    shutil.copy(ts, alone)
    assert main(["predict", str(alone), *images, "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == ["COVID", "Normal"] and result["model"] == str(alone)
    c = np.array([[p["probabilities"][k] for k in result["classes"]] for p in result["predictions"]])
    np.testing.assert_allclose(c, a, atol=1e-5)

    # Grad-CAM needs hooks, which TorchScript modules do not have: a clear error, not a traceback
    assert main(["predict", str(alone), images[0], "--cam", str(tmp_path / "cams")]) == 1
    assert "Grad-CAM needs the PyTorch model" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_the_documented_monai_command_exports_by_tracing(run_copy, tmp_path):
    target = tmp_path / "traced.ts"
    cmd = monai_command(run_copy, target, use_trace=True)
    assert cmd[:5] == ["python", "-m", "monai.bundle", "ckpt_export", "network_def"]
    assert cmd[cmd.index("--input_shape") + 1] == "[1,3,32,32]"
    done = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    traced = torch.jit.load(str(target)).eval()
    model = load_model(run_copy, device="cpu")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model.network(x), atol=1e-5, rtol=1e-5)


def test_export_errors(tmp_path, capsys):
    with pytest.raises(ModelLoadError, match="not a trained run folder.*missing.*model.pt"):
        from cxrkit.serve import export_torchscript

        export_torchscript(REPO / "bundles" / "inat_swav")
    assert main(["export", str(tmp_path / "nowhere")]) == 1
    assert "no such folder" in capsys.readouterr().err
    not_ts = tmp_path / "model.ts"
    not_ts.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="model.ts: not a TorchScript model"):
        load_model(not_ts)
