"""End-to-end bundle runs on real radiographs: MONAI's runner trains the repository's inat_swav bundle (one
self-contained config) and the run folder honours its contract, evaluates again with the same numbers and
predicts; a third-party plugin trains by name and from a written bundle with MONAI's runner alone."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from cxrkit.cli import main
from cxrkit.registry import weights
from support.paths import REPO, shared_data

PLUGINS = weights.names()


@pytest.mark.slow
def test_full_bundle_run_with_monai_runner_then_evaluate_and_infer(tmp_path):
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", "bundles/inat_swav/configs/metadata.json",
        "--config_file", "bundles/inat_swav/configs/train.yaml",
        "--dataset_dir", str(data), "--dataset", "radiography", "--task", "covid_vs_normal",
        "--epochs", "1", "--batch_size", "8", "--image_size", "32", "--max_items", "16",
        "--loss", "focal", "--allow_missing_weights", "true", "--weights_path", "null",
        "--output_dir", str(run), "--seed", "3", "--device", "cpu", "--progress", "false",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the run-folder contract
    for rel in ("configs/train.yaml", "configs/inference.yaml", "configs/evaluate.yaml", "configs/metadata.json",
                "configs/logging.conf", "models/model.pt", "models/checkpoint_last.pt", "split.json", "weights.json",
                "metrics.json", "metrics.csv", "predictions.csv", "versions.json", "summary.json"):
        assert (run / rel).is_file(), rel
    assert any((run / "tensorboard").iterdir())
    resolved = yaml.safe_load((run / "configs" / "train.yaml").read_text())
    assert (resolved["loss"], resolved["epochs"], resolved["seed"], resolved["image_size"]) == ("focal", 1, 3, 32)
    assert resolved["output_dir"] == str(run) and resolved["resume"] is False and resolved["plugin"] == "inat_swav"
    # ONE self-contained config (bundle_root "." is the working directory, not the bundle): what a resume runs
    assert {"run", "training", "train", "validate", "engine_inputs", "run_recorder"} <= set(resolved)
    assert resolved["mode"] == "finetune" and resolved["bundle_root"] == str(run)
    meta = json.loads((run / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "COVID", "1": "Normal"}
    assert meta["pytorch_version"] == torch.__version__.split("+")[0]  # a run records what it ran with
    assert json.loads((run / "weights.json").read_text()) == {
        "plugin": "inat_swav", "architecture": "resnet50", "path": None, "sha256": None, "pretrained": False}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Normal"] and metrics["positive_class"] == "COVID"
    assert metrics["best_metric"] == "val_accuracy" and metrics["best_epoch"] == 1
    row = metrics["epochs"][0]
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "time_s",
                "val_precision/COVID", "val_sensitivity/Normal", "val_specificity/COVID", "val_f1/Normal"):
        assert key in row, key
    assert row["lr"] == 0.001
    summary = json.loads((run / "summary.json").read_text())
    counts = summary["counts"]
    assert summary["status"] == "finished" and set(counts) == {"train", "val", "test"}
    assert sum(sum(c.values()) for c in counts.values()) == 16 and min(counts["test"].values()) >= 1
    n_val, n_test = sum(counts["val"].values()), sum(counts["test"].values())
    test_metrics = json.loads((run / "test" / "metrics.json").read_text())
    assert test_metrics["split"] == "test" and test_metrics["n_images"] == n_test
    with (run / "test" / "predictions.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == n_test
    assert summary["leakage"]["ok"] is True and summary["wall_time_s"] > 0
    versions = json.loads((run / "versions.json").read_text())
    assert {"python", "torch", "torchvision", "monai", "ignite", "numpy", "cxrkit", "device"} <= set(versions)
    with (run / "predictions.csv").open() as fh:
        preds = list(csv.DictReader(fh))
    assert len(preds) == n_val and all(not Path(p["image"]).is_absolute() for p in preds)
    probs = np.array([[float(p["prob_0"]), float(p["prob_1"])] for p in preds])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert [int(p["pred"]) for p in preds] == probs.argmax(1).tolist()

    # the run folder is a servable bundle: its inference config, read alone, builds the net model.pt loads into
    parser = ConfigParser()
    parser.read_config(str(run / "configs" / "inference.yaml"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(run / "models" / "model.pt", weights_only=True))

    # evaluate the validation split again with `cxrkit run`: same numbers as the training's best epoch
    assert main(["run", "evaluate", str(run), "--dataset_dir", str(data), "--subset", "val",
                 "--device", "cpu", "--progress", "false"]) == 0
    evaluation = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert evaluation["n_images"] == n_val
    assert evaluation["metrics"]["accuracy"] == pytest.approx(row["val_accuracy"])
    assert evaluation["metrics"]["auc"] == pytest.approx(row["val_auc"])
    with (run / "evaluation" / "predictions.csv").open() as fh:
        again = {p["image"]: float(p["prob_0"]) for p in csv.DictReader(fh)}
    assert again == pytest.approx({p["image"]: float(p["prob_0"]) for p in preds}, abs=1e-5)

    # inference on a folder and on one file -> predictions CSV
    out = tmp_path / "pred.csv"
    assert main(["run", "inference", str(run), "--input", str(data / "Normal"), "--output_file", str(out),
                 "--device", "cpu"]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(list((data / "Normal").glob("*.png"))) and "label" not in rows[0]
    assert {r["pred_class"] for r in rows} <= {"COVID", "Normal"}
    one = sorted((data / "COVID").glob("*.png"))[0]
    assert main(["run", "inference", str(run), "--input", str(one), "--output_file", str(out)]) == 0
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["image"] == str(one)


@pytest.mark.slow
def test_third_party_plugin_trains_by_name_and_from_a_written_bundle(tmp_path):
    if "xrv_resnet50" not in PLUGINS:
        pytest.skip("cxrkit-xrv is not installed (pip install -e plugins/cxrkit-xrv)")
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    small = ["--dataset_dir", str(data), "--max_items", "12", "--image_size", "32", "--epochs", "1",
             "--batch_size", "4", "--device", "cpu", "--allow_missing_weights", "true", "--progress", "false"]
    assert main(["run", "training", "xrv_resnet50", "--output_dir", str(tmp_path / "by_name"), *small]) == 0
    assert json.loads((tmp_path / "by_name" / "weights.json").read_text())["plugin"] == "xrv_resnet50"
    meta = json.loads((tmp_path / "by_name" / "configs" / "metadata.json").read_text())
    assert "cxrkit-xrv" in meta["required_packages_version"]
    # a written bundle runs with MONAI's runner alone, from its own folder
    assert main(["bundle", "write", "xrv_resnet50", "--output_dir", str(tmp_path / "xrv")]) == 0
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.yaml",
           "--meta_file", "configs/metadata.json", "--output_dir", str(tmp_path / "monai"), *small]
    proc = subprocess.run(cmd, cwd=tmp_path / "xrv", capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "monai" / "summary.json").read_text())
    assert summary["status"] == "finished" and sum(summary["counts"]["train"].values()) > 0
    net_in = yaml.safe_load((tmp_path / "monai" / "configs" / "inference.yaml").read_text())["in_channels"]
    assert net_in == 1  # the plugin's one-channel input
