"""``cxrkit demo``: the synthetic dataset is readable, labelled as synthetic and learnable; the command runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrkit.cli import main
from cxrkit.data import load_dataset
from cxrkit.demo import make_synthetic_dataset, synthetic_xray


def test_synthetic_dataset_layout_and_class_difference(tmp_path):
    root = make_synthetic_dataset(tmp_path / "data", per_class=6, size=48, seed=1)
    assert root.name == "COVID-19_Radiography_Dataset"
    assert "SYNTHETIC" in (root / "SYNTHETIC_DATA_README.txt").read_text()
    assert (tmp_path / "data" / "SYNTHETIC_DATA_README.txt").is_file()
    spec = load_dataset("radiography", root)
    assert spec.classes == ["COVID", "Normal"] and len(spec.items) == 12
    image = Image.open(root / "COVID" / "COVID-1.png")
    assert image.mode == "L" and image.size == (48, 48)
    # the class difference: bilateral peripheral lower-zone opacities
    rng = np.random.default_rng(0)
    zone = (slice(30, 44), np.r_[6:16, 32:42])
    covid = np.mean([synthetic_xray(True, 48, rng)[zone].mean() for _ in range(20)])
    normal = np.mean([synthetic_xray(False, 48, rng)[zone].mean() for _ in range(20)])
    assert covid > normal + 5
    again = make_synthetic_dataset(tmp_path / "again", per_class=6, size=48, seed=1)
    assert (again / "Normal" / "Normal-3.png").read_bytes() == (root / "Normal" / "Normal-3.png").read_bytes()
    with pytest.raises(ValueError, match="at least 5"):
        make_synthetic_dataset(tmp_path / "bad", per_class=2)


@pytest.mark.slow
def test_demo_command_trains_evaluates_and_reports(tmp_path, capsys):
    rc = main(["demo", "--dir", str(tmp_path / "demo"), "--per-class", "8", "--epochs", "1", "--image-size", "32",
               "--batch-size", "8", "--device", "cpu", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "RANDOM initialisation" in out and "cxrkit weights import inat_swav" in out
    assert "cxrkit weights fetch inat_swav" in out
    run_dir = next((tmp_path / "demo" / "runs").iterdir())
    assert f"run folder     : {run_dir}" in out and "test part      : " in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Normal"] and len(metrics["epochs"]) == 1
    assert json.loads((run_dir / "evaluation" / "metrics.json").read_text())["n_images"] >= 2
