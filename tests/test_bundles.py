"""The MONAI bundles: one base config in the package, thin repository bundles equal to it, a bundle for any plugin.

The end-to-end test trains the committed inat_swav bundle through ``python -m monai.bundle
run training`` (the base and the plugin's override as MONAI's list of config files) on
the real Radiography sample (32 px, 1 epoch, 16 images), then evaluates and runs inference
on the run folder with ``cxrkit run``; another trains a bundle ``cxrkit bundle write`` wrote
for the third-party ``xrv_resnet50`` plugin, with MONAI's runner alone.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser

from cxrkit.bundle import BundleNotFoundError, cached_bundle, config_files, find_bundle, write_bundle
from cxrkit.bundle.folders import base_files, bundle_files, check_bundles, sync_bundles, thin_files
from cxrkit.bundle.render import BundleParams, _set_top_level, base_config, render_config, render_metadata, render_override
from cxrkit.cli import main
from cxrkit.options import flag, optional, parse_overrides
from cxrkit.registry import RegistryError, weights
from support.paths import REPO, shared_data

BUNDLES = REPO / "bundles"
PLUGINS = weights.names()  # built-in and installed third-party plugins
COMMITTED = sorted(p.name for p in BUNDLES.iterdir() if p.is_dir() and not p.name.startswith("_"))
IO_KEYS = ("type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
           "channel_def")
META_KEYS = ("version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
             "description", "authors", "copyright", "network_data_format")
ZOO_FILES = {"LICENSE", "configs/metadata.json", "configs/train.yaml", "configs/logging.conf", "docs/README.md",
             "models/README.md"}


def _parser(*files: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files] if len(files) > 1 else str(files[0]))
    return parser


def test_committed_bundles_equal_what_the_package_renders(tmp_path):
    assert {"inat_swav", "random", "chexnet"} <= set(COMMITTED) and set(COMMITTED) <= set(PLUGINS)
    assert check_bundles(BUNDLES) == [], "run `cxrkit bundle sync` and commit bundles/"
    assert (BUNDLES / "_base" / "configs" / "train.yaml").read_text() == base_config("train")
    for name in COMMITTED:  # thin: only what differs; nothing that cannot run without a model
        assert {str(p.relative_to(BUNDLES / name)) for p in (BUNDLES / name).rglob("*") if p.is_file()} == {
            "configs/train.yaml", "configs/metadata.json"}
        override = yaml.safe_load((BUNDLES / name / "configs" / "train.yaml").read_text())
        assert override == {"plugin": name}
    # drift is caught: an edited value, a missing file, a stale file, a folder of no plugin
    copy = tmp_path / "bundles"
    shutil.copytree(BUNDLES, copy)
    train = copy / "random" / "configs" / "train.yaml"
    train.write_text(train.read_text() + "epochs: 5\n")
    (copy / "_base" / "configs" / "logging.conf").unlink()
    (copy / "chexnet" / "configs" / "inference.yaml").write_text("run: 1\n")
    (copy / "no_such_plugin" / "configs").mkdir(parents=True)
    problems = "\n".join(check_bundles(copy))
    assert "random/configs/train.yaml: differs" in problems and "logging.conf: missing" in problems
    assert "chexnet/configs/inference.yaml: not part of the bundle" in problems
    assert "no_such_plugin: no weight plugin of that name" in problems
    assert main(["bundle", "check", "--bundles-dir", str(copy)]) == 1
    changed = sync_bundles(copy)
    assert {p.name for p in changed} == {"train.yaml", "logging.conf"}
    assert [p for p in check_bundles(copy) if "logging.conf" in p or "differs" in p] == []


@pytest.mark.parametrize("plugin", PLUGINS)
def test_base_plus_override_equals_the_self_contained_config(plugin, tmp_path):
    """MONAI's merge of bundles/_base + bundles/<plugin> is exactly the written bundle's config."""
    params = BundleParams(plugin)
    base = yaml.safe_load(base_config("train"))
    override = yaml.safe_load(render_override("train", params))
    whole = yaml.safe_load(render_config("train", params))
    (tmp_path / "base.yaml").write_text(base_config("train"))
    (tmp_path / "override.yaml").write_text(render_override("train", params))
    merged = ConfigParser.load_config_files([tmp_path / "base.yaml", tmp_path / "override.yaml"])
    assert merged == whole == {**base, **override}
    assert override == {"plugin": plugin} and base["plugin"] is None
    assert {k for k in whole if whole[k] != base[k]} == {"plugin"}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_self_contained_bundle_for_every_plugin(plugin, tmp_path):
    folder = write_bundle(plugin, tmp_path / "b")
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == ZOO_FILES
    meta = json.loads((folder / "configs" / "metadata.json").read_text())
    for key in META_KEYS:
        assert meta.get(key) not in (None, "", {}), f"{plugin}: metadata lacks {key}"
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    for key in IO_KEYS:
        assert key in image and key in pred, f"{plugin}: network_data_format lacks {key}"
    source = weights.get(plugin)
    assert pred["channel_def"] == {"0": "COVID", "1": "Normal"} and pred["num_channels"] == 2
    assert image["spatial_shape"] == [source.input_size] * 2 and image["num_channels"] == source.in_channels
    dist = weights.entry(plugin).distribution
    assert "cxrkit" in meta["required_packages_version"]
    if dist != "cxrkit":  # a third party's plugin: its package is named too
        assert dist in meta["required_packages_version"]
    cfg = yaml.safe_load((folder / "configs" / "train.yaml").read_text())
    assert cfg["plugin"] == plugin and cfg["epochs"] == 50 and cfg["batch_size"] == 32 and cfg["lr"] == 0.001
    assert cfg["betas"] == [0.9, 0.999] and cfg["eps"] == 1e-08 and cfg["weight_decay"] == 0.0
    assert cfg["augment"] is False and cfg["loss"] == "ce" and "run" in cfg and "training" in cfg
    parser = _parser(folder / "configs" / "train.yaml")
    parser.parse()
    assert parser.get_parsed_content("image_size") == source.input_size  # the plugin's own size by default
    assert config_files(folder, "train") == [folder / "configs" / "train.yaml"]


@pytest.mark.parametrize("plugin", ["inat_swav", "xrv_resnet50"])
def test_run_folder_configs_build_the_trained_network_without_a_weight_file(plugin, tmp_path):
    if plugin not in PLUGINS:
        pytest.skip(f"{plugin} is not installed (pip install -e plugins/cxrkit-xrv)")
    params = BundleParams(plugin, image_size=32, head="linear", classes=("a", "b", "c"), in_channels=3,
                          bundle_root="/runs/x")
    for kind, run_id in (("evaluate", "evaluating"), ("inference", "inference")):
        config = yaml.safe_load(render_config(kind, params))
        assert (config["plugin"], config["image_size"], config["head"], config["bundle_root"]) == (
            plugin, 32, "linear", "/runs/x")
        # the names live in metadata.json only: the config reads them when it runs
        assert config["classes"] == "$workflow.class_names(@bundle_root)" and run_id in config
        assert '"a"' not in render_config(kind, params)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.yaml").write_text(render_config("inference", params))
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps(render_metadata(params)))
    parser = _parser(tmp_path / "configs" / "inference.yaml")
    parser["bundle_root"] = str(tmp_path)
    assert parser.get_parsed_content("classes") == ["a", "b", "c"] and parser.get_parsed_content("num_classes") == 3
    net = parser.get_parsed_content("network_def")
    assert net.weights_info["pretrained"] is False and net.weights_info["plugin"] == plugin
    assert net.head_name == "linear" and net.in_channels == 3
    net.eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_configs_define_monais_required_property_ids():
    from monai.bundle.properties import InferProperties, TrainProperties
    from monai.bundle.utils import ID_SEP_KEY

    params = BundleParams("inat_swav", classes=("COVID", "Normal"))
    for kind, properties in (("train", TrainProperties), ("inference", InferProperties), ("evaluate", InferProperties)):
        config = yaml.safe_load(render_config(kind, params))
        parser = ConfigParser(config)
        required = [p["id"] for p in properties.values() if p.get("required")]
        missing = [pid for pid in required if pid.replace(ID_SEP_KEY, "#") not in parser]
        assert missing == [], f"{kind} config lacks MONAI's required ids {missing}"
    parser = _parser(*config_files(BUNDLES / "inat_swav", "train"))
    parser.update({"num_classes": 2, "allow_missing_weights": "true"})  # train config, no weight file here
    net = parser.get_parsed_content("network_def")
    assert net.weights_info["plugin"] == "inat_swav" and net.head_name == "study"


def test_rendering_errors_are_caught_before_a_run():
    with pytest.raises(ValueError, match="unknown config kind 'predict'"):
        base_config("predict")
    with pytest.raises(ValueError, match="has 0 top-level 'in_channels:' lines"):
        _set_top_level(base_config("train"), "in_channels", 1, "train")  # a training config takes the plugin's
    assert {"classes", "in_channels"}.isdisjoint(BundleParams("random", classes=("a", "b"), in_channels=1)
                                                 .overrides("train"))
    # the base alone names no plugin: a clear error, not a NoneType one
    parser = ConfigParser(yaml.safe_load(base_config("train")))
    with pytest.raises(Exception) as caught:
        parser.get_parsed_content("weight_source")
    assert "no weight plugin set" in "".join(str(e) for e in _chain(caught.value))
    with pytest.raises(RegistryError, match="nope"):
        bundle_files("nope")


def _chain(exc: BaseException):
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def test_find_bundle_by_path_or_by_plugin_name(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_BUNDLE_CACHE", str(tmp_path / "cache"))
    assert find_bundle(BUNDLES / "inat_swav") == (BUNDLES / "inat_swav").resolve()
    assert find_bundle(BUNDLES / "inat_swav" / "configs") == (BUNDLES / "inat_swav").resolve()
    rendered = find_bundle("inat_swav")  # by name: from the package, whatever the repository holds
    assert rendered.parent == tmp_path / "cache" and rendered.name.startswith("inat_swav-")
    assert {k: (rendered / k).read_text() for k in ZOO_FILES} == bundle_files("inat_swav")
    assert cached_bundle("inat_swav") == rendered  # the same content, the same folder
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [rendered.name]  # no staging folder left behind
    assert config_files(BUNDLES / "random", "train") == [BUNDLES / "_base" / "configs" / "train.yaml",
                                                          BUNDLES / "random" / "configs" / "train.yaml"]
    lone = tmp_path / "lone"
    shutil.copytree(BUNDLES / "random", lone / "random")
    with pytest.raises(FileNotFoundError, match="only what differs.*_base.*missing.*cxrkit bundle write random"):
        config_files(lone / "random", "train")
    with pytest.raises(FileNotFoundError, match="holds training only.*run folder"):
        config_files(rendered, "inference")
    with pytest.raises(BundleNotFoundError, match="nope: not a bundle folder.*cxrkit list weights"):
        find_bundle("nope")
    # a cache folder that cannot be written: the system's temporary folder instead
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("CXRKIT_BUNDLE_CACHE", str(tmp_path / "a_file" / "cache"))
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    fallback = find_bundle("random")
    assert fallback.parent.parent == tmp_path / "tmp" and (fallback / "configs" / "train.yaml").is_file()
    with pytest.raises(OSError):
        cached_bundle("random", tmp_path / "a_file" / "cache")


def test_a_new_builtin_source_needs_no_bundle_folder(tmp_path, monkeypatch, weight_plugin):
    """Adding a built-in weight source is its WeightSource entry: every bundle command works by its name."""
    monkeypatch.setenv("CXRKIT_BUNDLE_CACHE", str(tmp_path / "cache"))
    weight_plugin("new_source", input_size=96)
    assert weights.entry("new_source").distribution == "cxrkit"
    assert check_bundles(BUNDLES) == []  # no committed folder demanded
    bundle = find_bundle("new_source")
    parser = _parser(*config_files(bundle, "train"))
    assert parser.get_parsed_content("image_size") == 96
    parser.update({"num_classes": 2, "allow_missing_weights": "true"})
    assert parser.get_parsed_content("network_def").weights_info["architecture"] == "resnet18"
    assert main(["bundle", "write", "new_source", "--output_dir", str(tmp_path / "w")]) == 0
    assert json.loads((tmp_path / "w" / "configs" / "metadata.json").read_text())["cxrkit"]["image_size"] == 96
    assert main(["bundle", "sync", "--bundles_dir", str(tmp_path / "repo"), "new_source"]) == 1  # no such folder
    (tmp_path / "repo").mkdir()
    assert main(["bundle", "sync", "--bundles_dir", str(tmp_path / "repo"), "new_source"]) == 0
    assert check_bundles(tmp_path / "repo") == []
    assert {p.name for p in (tmp_path / "repo").iterdir()} == {"_base", "new_source"}
    assert (tmp_path / "repo" / "new_source" / "configs" / "train.yaml").read_text() == \
        thin_files("new_source")["configs/train.yaml"]
    assert (tmp_path / "repo" / "_base" / "configs" / "train.yaml").read_text() == base_files()["configs/train.yaml"]


def test_bundle_write_command(tmp_path, capsys):
    out = tmp_path / "zoo"
    assert main(["bundle", "write", "random", "--output-dir", str(out)]) == 0
    assert "python -m monai.bundle run training --config_file" in capsys.readouterr().out
    assert {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} == ZOO_FILES
    (out / "models" / "model.pt").write_bytes(b"kept")
    (out / "configs" / "train.yaml").write_text("edited")
    assert main(["bundle", "write", "random", "--output_dir", str(out)]) == 1
    assert "is not empty" in capsys.readouterr().err and (out / "configs" / "train.yaml").read_text() == "edited"
    assert main(["bundle", "write", "random", "--output_dir", str(out), "--overwrite"]) == 0
    assert (out / "models" / "model.pt").read_bytes() == b"kept"
    assert (out / "configs" / "train.yaml").read_text() == bundle_files("random")["configs/train.yaml"]
    assert main(["bundle", "write", "nope", "--output_dir", str(tmp_path / "x")]) == 2
    assert "unknown weight source 'nope'" in capsys.readouterr().err and not (tmp_path / "x").exists()
    assert main(["bundle", "check", "--bundles_dir", str(BUNDLES)]) == 0


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
    assert "holds training only" in capsys.readouterr().err


def test_the_recorder_records_a_thin_bundle_as_one_config(tmp_path):
    from cxrkit.engine.record import ConfigSnapshot, _raw_config

    whole = yaml.safe_load(base_config("train"))
    # the thin bundle's override is read on its base bundles/_base
    merged = _raw_config(str(BUNDLES / "inat_swav" / "configs" / "train.yaml"))
    assert merged == {**whole, "plugin": "inat_swav"}
    # the list MONAI was given, merged in order
    files = [str(f) for f in config_files(BUNDLES / "moco_v2", "train")]
    assert _raw_config(files) == {**whole, "plugin": "moco_v2"}
    # an override whose base is elsewhere, or no file at all: cxrkit's base config stands in
    (tmp_path / "x" / "configs").mkdir(parents=True)
    (tmp_path / "x" / "configs" / "train.yaml").write_text('plugin: "imagenet"\nepochs: 3\n')
    assert _raw_config(str(tmp_path / "x" / "configs" / "train.yaml")) == {**whole, "plugin": "imagenet", "epochs": 3}
    assert _raw_config(str(tmp_path / "missing" / "configs" / "train.yaml")) == whole
    # a self-contained config and the runner's snapshot are taken as they are
    written = write_bundle("random", tmp_path / "zoo")
    assert _raw_config(written / "configs" / "train.yaml") == yaml.safe_load(
        (written / "configs" / "train.yaml").read_text())
    assert _raw_config(ConfigSnapshot({"a": 1, "_meta_": {}})) == {"a": 1}


@pytest.mark.slow
def test_full_bundle_run_with_monai_runner_then_evaluate_and_infer(tmp_path):
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--meta_file", "bundles/inat_swav/configs/metadata.json",
        "--config_file", "['bundles/_base/configs/train.yaml','bundles/inat_swav/configs/train.yaml']",
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
    # ONE self-contained config from the thin bundle's two files (bundle_root "." is not the bundle here):
    # what a resume runs
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
