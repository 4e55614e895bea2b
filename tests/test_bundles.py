"""The MONAI bundles: generated and current, spec metadata, configs that parse and build, a real run.

The end-to-end test trains the inat_swav bundle through ``python -m monai.bundle
run training`` on the real Radiography sample (32 px, 1 epoch, 16 images), then
evaluates and runs inference on the run folder with ``cxrkit run``.
"""

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

from cxrkit.bundle.generate import KINDS, builtin_plugins, check_bundles, main as generate_main, write_bundles
from cxrkit.cli import main
from cxrkit.options import parse_overrides
from cxrkit.options import flag, optional
from support.paths import REPO, shared_data

BUNDLES = REPO / "bundles"
PLUGINS = builtin_plugins()
IO_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
           "channel_def")
META_KEYS = ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
             "description", "authors", "copyright", "network_data_format")


def test_committed_bundles_equal_the_generator_output(tmp_path, capsys):
    assert len(PLUGINS) >= 12 and {"inat_swav", "random", "chexnet"} <= set(PLUGINS)
    assert check_bundles() == [], "run `python -m cxrkit.bundle.generate` and commit bundles/"
    assert generate_main(["--check"]) == 0
    write_bundles(tmp_path, ["random"])
    config = tmp_path / "random" / "configs" / "train.yaml"
    config.write_text(config.read_text().replace("epochs: 50", "epochs: 5"))
    (tmp_path / "random" / "LICENSE").unlink()
    problems = check_bundles(tmp_path, ["random"])
    assert any("train.yaml: differs" in p for p in problems) and any("LICENSE: missing" in p for p in problems)
    assert generate_main(["--check", "--root", str(tmp_path), "random"]) == 1


@pytest.mark.parametrize("plugin", PLUGINS)
def test_bundle_layout_and_metadata(plugin):
    root = BUNDLES / plugin
    for rel in ("LICENSE", "configs/metadata.json", "configs/logging.conf", "docs/README.md", "models",
                *(f"configs/{k}.yaml" for k in KINDS)):
        assert (root / rel).exists(), f"{root / rel} missing"
    meta = json.loads((root / "configs" / "metadata.json").read_text())
    for key in META_KEYS:
        assert meta.get(key) not in (None, "", {}), f"{plugin}: metadata lacks {key}"
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    for key in IO_KEYS:
        assert key in image and key in pred, f"{plugin}: network_data_format lacks {key}"
    assert pred["channel_def"] == {"0": "COVID", "1": "Normal"} and pred["num_channels"] == 2
    assert image["spatial_shape"] == [224, 224] and image["value_range"][0] < 0 < image["value_range"][1]
    cfg = yaml.safe_load((root / "configs" / "train.yaml").read_text())
    assert cfg["plugin"] == plugin and cfg["epochs"] == 50 and cfg["batch_size"] == 32 and cfg["lr"] == 0.001
    assert cfg["betas"] == [0.9, 0.999] and cfg["eps"] == 1e-08 and cfg["weight_decay"] == 0.0
    assert cfg["image_size"] == 224 and cfg["augment"] is False and cfg["loss"] == "ce"
    assert cfg["optimizer"]["_target_"] == "torch.optim.Adam"
    assert cfg["train"]["trainer"]["_target_"] == "monai.engines.SupervisedTrainer"
    assert "run" in cfg and "training" in cfg


@pytest.mark.parametrize("plugin", PLUGINS)
def test_configs_parse_and_build_the_network_without_a_weight_file(plugin):
    root = BUNDLES / plugin
    for kind in KINDS:
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / f"{kind}.yaml"))
        parser.parse()
        assert "run" in parser and {"train": "training", "evaluate": "evaluating", "inference": "inference"}[kind] in parser
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.yaml"))
    net = parser.get_parsed_content("network_def")
    assert net.weights_info["pretrained"] is False and net.weights_info["plugin"] == plugin
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, net.in_channels, 32, 32)).shape == (1, 2)
    assert parser.get_parsed_content("preprocessing") is not None


def test_configs_define_monais_required_property_ids():
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.bundle.utils import ID_SEP_KEY

    root = BUNDLES / "inat_swav" / "configs"
    for kind, properties in (("train", TrainProperties), ("inference", InferProperties), ("evaluate", InferProperties)):
        parser = ConfigParser()
        parser.read_config(str(root / f"{kind}.yaml"))
        required = [p["id"] for p in properties.values() if p.get("required")]
        missing = [pid for pid in required if pid.replace(ID_SEP_KEY, "#") not in parser]
        assert missing == [], f"{kind}.yaml lacks MONAI's required ids {missing}"
    parser = ConfigParser()
    parser.read_config(str(root / "train.yaml"))
    parser.update({"num_classes": 2, "allow_missing_weights": "true"})  # train config, no weight file here
    net = parser.get_parsed_content("network_def")
    assert net.weights_info["plugin"] == "inat_swav" and net.head_name == "study"


def test_override_parsing_matches_monai_command_line():
    got = parse_overrides(["--dataset_dir", "/data/x", "--epochs", "2", "--loss", "focal", "--resume",
                           "--weights_path", "null", "--lr=1e-4", "--train#trainer#max_epochs", "3", "--cache", "true"])
    assert got == {"dataset_dir": "/data/x", "epochs": 2, "loss": "focal", "resume": True, "weights_path": "null",
                   "lr": 0.0001, "train#trainer#max_epochs": 3, "cache": "true"}
    assert optional(got["weights_path"]) is None and flag(got["cache"]) is True and flag("false") is False
    with pytest.raises(ValueError, match="given twice"):
        parse_overrides(["--epochs", "1", "--epochs", "2"])
    with pytest.raises(ValueError, match="unexpected argument"):
        parse_overrides(["epochs"])
    with pytest.raises(ValueError, match="true or false"):
        flag("maybe", "cache")


def test_cli_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["run", "training", str(tmp_path)]) == 1
    assert "not a bundle folder" in capsys.readouterr().err
    rc = main(["run", "training", str(BUNDLES / "random"), "--output_dir", str(tmp_path / "r"), "--progress", "false"])
    err = capsys.readouterr().err
    assert rc == 1 and "no dataset given: pass --dataset_dir DIR" in err and "Traceback" not in err
    assert main(["run", "inference", str(BUNDLES / "random"), "--input", str(tmp_path)]) == 1
    assert "no image files" in capsys.readouterr().err
    from PIL import Image

    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    assert main(["run", "inference", str(BUNDLES / "random"), "--input", str(tmp_path / "x.png")]) == 1
    assert "holds no trained model" in capsys.readouterr().err


@pytest.mark.slow
def test_full_bundle_run_with_monai_runner_then_evaluate_and_infer(tmp_path):
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", str(BUNDLES / "inat_swav" / "configs" / "metadata.json"),
        "--config_file", str(BUNDLES / "inat_swav" / "configs" / "train.yaml"),
        "--dataset_dir", str(data), "--dataset", "radiography", "--task", "covid_vs_normal",
        "--epochs", "1", "--batch_size", "8", "--image_size", "32", "--max_items", "16",
        "--loss", "focal", "--allow_missing_weights", "true", "--weights_path", "null",
        "--output_dir", str(run), "--seed", "3", "--device", "cpu", "--progress", "false",
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the run-folder contract
    for rel in ("configs/train.yaml", "configs/inference.yaml", "configs/metadata.json", "configs/logging.conf",
                "models/model.pt", "models/checkpoint_last.pt", "split.json", "weights.json", "metrics.json",
                "metrics.csv", "predictions.csv", "versions.json", "summary.json"):
        assert (run / rel).is_file(), rel
    assert any((run / "tensorboard").iterdir())
    resolved = yaml.safe_load((run / "configs" / "train.yaml").read_text())
    assert (resolved["loss"], resolved["epochs"], resolved["seed"], resolved["image_size"]) == ("focal", 1, 3, 32)
    assert resolved["output_dir"] == str(run) and resolved["resume"] is False
    meta = json.loads((run / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "COVID", "1": "Normal"}
    assert json.loads((run / "weights.json").read_text()) == {
        "plugin": "inat_swav", "architecture": "resnet50", "path": None, "sha256": None, "pretrained": False}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Normal"] and metrics["positive_class"] == "COVID"
    assert metrics["best_metric"] == "val_accuracy" and metrics["best_epoch"] == 1
    row = metrics["epochs"][0]
    for key in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "lr", "time_s",
                "val_precision/COVID", "val_recall/Normal", "val_specificity/COVID", "val_f1/Normal"):
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

    # the run folder is a servable bundle: its inference config builds the net that model.pt loads into
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
