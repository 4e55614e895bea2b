"""MONAI's own runner on the repository's bundles: every ``bundles/<plugin>/`` parses and resolves with MONAI's
ConfigParser; ``python -m monai.bundle run training`` trains a bundle from its own folder and from a copy anywhere
(tiny synthetic data); the evaluate and inference configs, MONAI's way, on the run folder that training wrote."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver

from cxrkit.bundle.folders import shipped_plugins
from cxrkit.engine.settings import check_settings
from cxrkit.registry import weights
from support.paths import REPO

BUNDLES = REPO / "bundles"
#: tiny, fast training overrides (12 synthetic 32 px images, 1 epoch, no weight file needed)
TINY = ["--dataset", "csv", "--image_size", "32", "--epochs", "1", "--batch_size", "4", "--device", "cpu",
        "--progress", "false", "--tensorboard_images", "0", "--num_workers", "0"]
ENV = dict(os.environ, PYTHONWARNINGS="ignore")


def _monai(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "monai.bundle", "run", *args], cwd=cwd, capture_output=True,
                          text=True, env=ENV, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-6000:]
    return proc


def _undefined_references(parser: ConfigParser) -> list[str]:
    refs = ReferenceResolver.find_refs_in_config(parser.get(), id="")
    return sorted(ref for ref in refs if ref not in parser)


@pytest.mark.parametrize("plugin", shipped_plugins())
def test_every_bundle_parses_and_resolves_with_monais_config_parser(plugin):
    """What ``python -m monai.bundle run training`` reads, without training: the one file and its metadata parse,
    every ``@id`` is defined, and the ids ``initialize`` checks first resolve to this plugin's valid settings."""
    configs = BUNDLES / plugin / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "train.yaml"))
    parser.read_meta(str(configs / "metadata.json"))
    parser.parse()
    assert "training" in parser and parser["run"] == "@training" and "finalize" in parser
    assert _undefined_references(parser) == []
    source = parser.get_parsed_content("weight_source")
    assert source is weights.get(plugin) and parser.get_parsed_content("image_size") == source.input_size
    assert parser.get_parsed_content("_meta_#network_data_format#inputs#image#spatial_shape") == [source.input_size] * 2
    parser["dataset_dir"] = str(REPO)
    settings = parser.get_parsed_content("settings")
    assert settings["plugin"] == plugin and settings["epochs"] == 50
    check_settings("training", settings)  # what `initialize` runs first: every value valid
    for kind, run_id in (("evaluate", "evaluating"), ("inference", "inference")):
        merged = ConfigParser()
        merged.read_config([str(configs / "train.yaml"), str(configs / f"{kind}.yaml")])
        merged.parse()
        assert merged["run"] == f"@{run_id}" and merged["finalize"] == [] and _undefined_references(merged) == []
        assert merged["plugin"] == plugin and merged.get_parsed_content("image_size") == source.input_size


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dataset) -> dict[str, Path]:
    """``bundles/random`` trained by MONAI's runner from a copy in a temporary folder, run from another folder."""
    root = tmp_path_factory.mktemp("monai-runner")
    copy, elsewhere, run = root / "copy" / "random", root / "elsewhere", root / "run"
    shutil.copytree(BUNDLES / "random", copy)
    elsewhere.mkdir()
    _monai(elsewhere, "training", "--meta_file", str(copy / "configs" / "metadata.json"),
           "--config_file", str(copy / "configs" / "train.yaml"), "--dataset_dir", str(synthetic_dataset),
           "--output_dir", str(run), *TINY)
    return {"copy": copy, "elsewhere": elsewhere, "run": run, "data": synthetic_dataset}


@pytest.mark.slow
def test_monai_runner_trains_a_copy_of_a_bundle_from_anywhere(trained):
    run, copy = trained["run"], trained["copy"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and sum(sum(c.values()) for c in summary["counts"].values()) == 12
    assert json.loads((run / "weights.json").read_text())["plugin"] == "random"
    recorded = json.loads((run / "configs" / "metadata.json").read_text())
    assert recorded["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "COVID", "1": "Normal"}
    assert (run / "models" / "model.pt").is_file()
    # nothing written beside the copy or into the working directory; the copy is unchanged
    assert list(trained["elsewhere"].iterdir()) == []
    assert {p.name for p in copy.iterdir()} == {"configs", "docs", "models", "LICENSE"}
    assert [p.name for p in (copy / "models").iterdir()] == ["README.md"]


@pytest.mark.slow
def test_monai_runner_trains_a_bundle_from_its_own_folder(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    _monai(REPO, "training", "--meta_file", "bundles/random/configs/metadata.json",
           "--config_file", "bundles/random/configs/train.yaml", "--dataset_dir", str(synthetic_dataset),
           "--output_dir", str(run), *TINY)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert (run / "models" / "model.pt").is_file() and not (REPO / "runs").exists()


def _rows(path: Path) -> dict[str, list[float]]:
    with path.open() as fh:
        return {r["image"]: [float(r["prob_0"]), float(r["prob_1"])] for r in csv.DictReader(fh)}


@pytest.mark.slow
def test_evaluate_and_inference_of_a_trained_run_the_model_zoo_way(trained, tmp_path):
    run, copy, data = trained["run"], trained["copy"], trained["data"]
    best = json.loads((run / "metrics.json").read_text())["epochs"][0]
    n_val = sum(json.loads((run / "summary.json").read_text())["counts"]["val"].values())
    # the run folder's own configs, as MONAI's list: its training config, then its evaluate config
    _monai(tmp_path, "evaluating", "--config_file", f"['{run}/configs/train.yaml','{run}/configs/evaluate.yaml']",
           "--dataset", "csv", "--dataset_dir", str(data), "--subset", "val", "--device", "cpu", "--progress", "false")
    own = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert own["n_images"] == n_val and own["metrics"]["accuracy"] == pytest.approx(best["val_accuracy"])
    # the bundle's short override on the bundle's training config, pointed at the run folder
    _monai(copy, "evaluating", "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
           "--meta_file", "configs/metadata.json", "--bundle_root", str(run), "--image_size", "32",
           "--dataset", "csv", "--dataset_dir", str(data), "--subset", "val", "--output_dir", str(tmp_path / "zoo"),
           "--device", "cpu",
           "--progress", "false")
    zoo = json.loads((tmp_path / "zoo" / "metrics.json").read_text())
    assert zoo["metrics"].pop("confusion_matrix") == own["metrics"].pop("confusion_matrix")
    assert zoo["metrics"] == pytest.approx(own["metrics"], nan_ok=True) and zoo["n_images"] == n_val
    # inference: the run folder's inference.yaml alone (what MONAI Label reads), and the bundle's override
    images = str(data / "img")
    _monai(tmp_path, "inference", "--config_file", f"{run}/configs/inference.yaml", "--input", images,
           "--output_file", str(tmp_path / "alone.csv"), "--device", "cpu")
    _monai(copy, "inference", "--config_file", "['configs/train.yaml','configs/inference.yaml']",
           "--bundle_root", str(run), "--image_size", "32", "--input", images,
           "--output_file", str(tmp_path / "zoo.csv"), "--device", "cpu")
    alone, zoo_rows = _rows(tmp_path / "alone.csv"), _rows(tmp_path / "zoo.csv")
    assert len(alone) == 12 and alone.keys() == zoo_rows.keys()
    assert all(v == pytest.approx(zoo_rows[k], abs=1e-5) for k, v in alone.items())
    assert all(sum(v) == pytest.approx(1.0, abs=1e-5) for v in alone.values())
    assert list(copy.iterdir()) and not (copy / "evaluation").exists()  # the bundle folder is left as it was
