"""Option names and values are checked before anything runs (issue 15, finding 5): a misspelled override is an
error naming the nearest known ids, a bad value names its option, and no run folder is created for either."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from cxrkit.cli import main
from cxrkit.engine.settings import SETTINGS, SettingsError, check_overrides, check_settings, runner_arguments
from support.paths import REPO

BUNDLE = REPO / "bundles" / "random"
#: the bundle's self-contained training config (what MONAI's runner is given).
CONFIG_FILES = str(BUNDLE / "configs" / "train.yaml")


@pytest.fixture
def small_data(tmp_path) -> Path:
    """8 synthetic 32 px images in a CSV dataset (two classes)."""
    from cxrkit.demo import synthetic_xray

    root = tmp_path / "data"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label"])
        for i in range(8):
            Image.fromarray(synthetic_xray(i % 2 == 0, 32, rng)).save(root / "img" / f"{i}.png")
            writer.writerow([f"img/{i}.png", ["COVID", "Normal"][i % 2]])
    return root


def _train(data: Path, out: Path, *extra: str) -> int:
    options = {"--dataset": "csv", "--dataset_dir": str(data), "--image_size": "32", "--epochs": "1",
               "--batch_size": "4", "--output_dir": str(out), "--device": "cpu", "--progress": "false",
               "--tensorboard_images": "0"}
    options.update(zip(extra[::2], extra[1::2]))
    return main(["run", "training", str(BUNDLE), *[t for pair in options.items() for t in pair]])


def test_a_misspelled_option_is_an_error_naming_the_nearest_ids_and_nothing_is_written(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_data, out, "--max_itemz", "4") != 0  # before: trained on the whole dataset
    error = capsys.readouterr().err
    assert "unknown option for the training config" in error and "--max_itemz (did you mean --max_items?)" in error
    assert not out.exists()
    assert _train(small_data, out, "--train#trainer#max_epoch", "2", "--trian#x", "1") != 0
    error = capsys.readouterr().err
    assert "--train#trainer#max_epoch (did you mean --train#trainer#max_epochs?)" in error
    assert "--trian#x (did you mean --train or --training?)" in error and not out.exists()


def test_every_bad_value_names_its_option_at_once_and_nothing_is_written(small_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = _train(small_data, out, "--epochs", "-1", "--image_size", "abc", "--lr", "0", "--loss", "focl",
                "--val_fraction", "1", "--device", "gpu", "--amp", "maybe", "--head", "studdy")
    error = capsys.readouterr().err
    assert rc != 0 and "SettingsError: bad option values:" in error
    for expected in ("--epochs must be >= 1, got -1", "--image_size must be a whole number, got 'abc'",
                     "--lr must be > 0", "--loss must be one of ce, focal, got 'focl' (did you mean focal?)",
                     "--val_fraction must be between 0.01 and 0.95, got 1",
                     "unknown --device 'gpu'", "--amp must be true or false, got 'maybe'",
                     "--head must be one of study, linear, sun2024, got 'studdy' (did you mean study?)"):
        assert expected in error
    assert "max_epochs is invalid" not in error and "invalid literal" not in error
    assert not out.exists()
    assert _train(tmp_path / "nowhere", out) != 0
    assert f"--dataset_dir {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err and not out.exists()


def test_evaluate_and_inference_check_their_options(tiny_run, tmp_path, capsys):
    assert main(["run", "inference", str(tiny_run), "--input", str(tmp_path / "none.png"), "--device", "cpu"]) != 0
    assert f"--input {tmp_path / 'none.png'}: no such file or folder" in capsys.readouterr().err
    assert main(["run", "inference", str(tiny_run), "--device", "cpu"]) != 0
    assert "no input given: pass --input FILE_OR_DIR" in capsys.readouterr().err
    assert main(["run", "evaluate", str(tiny_run), "--dataset_dir", str(tmp_path), "--subset", "vall"]) != 0
    assert "--subset must be one of all, val, train, test, got 'vall' (did you mean val" in capsys.readouterr().err
    assert main(["run", "evaluate", str(tiny_run), "--dataset_dir", str(tmp_path), "--bacth_size", "2"]) != 0
    assert "--bacth_size (did you mean --batch_size" in capsys.readouterr().err
    assert not (tiny_run / "evaluation" / "missing").exists()


@pytest.mark.parametrize("name, value, message", [
    ("batch_size", 0, "--batch_size must be >= 1, got 0"),
    ("num_workers", -1, "--num_workers must be >= 0"),
    ("seed", -3, "--seed must be >= 0"),
    ("max_items", 1, "--max_items must be >= 2"),
    ("folds", 1, "--folds must be >= 2"),
    ("betas", [0.9], "--betas must be two numbers"),
    ("betas", [0.9, 1.0], "--betas must be two numbers in [0, 1)"),
    ("weight_decay", -0.1, "--weight_decay must be >= 0.0"),
    ("early_stopping_patience", 0, "--early_stopping_patience must be >= 1"),
    ("dataset", "radiograpy", "--dataset 'radiograpy' is not a known dataset (did you mean radiography?)"),
    ("plugin", "imagnet", "--plugin 'imagnet' is not a known weight (did you mean imagenet"),
    ("mode", "probe", "--mode must be one of finetune, linear_probe"),
    ("compile", "sometimes", "--compile must be true or false"),
    ("weights_path", "/no/such.pth", "--weights_path /no/such.pth: no such file"),
    ("best_metric", None, "--best_metric is needed"),
    ("positive_class", [1], "--positive_class must be a class name or index"),
    ("dataset_options", "views=PA", "--dataset_options must be a mapping of the adapter's options"),
])
def test_each_setting_reader(name, value, message):
    with pytest.raises(SettingsError, match="bad option value") as info:
        check_settings("training", {"dataset_dir": ".", name: value})
    assert message in str(info.value)


def test_valid_values_pass_and_folds_bound_fold():
    checked = check_settings("training", {"dataset_dir": ".", "epochs": "3", "amp": "auto", "resume": "false",
                                          "betas": [0.9, 0.99], "num_threads": None, "positive_class": 1})
    assert checked["epochs"] == 3 and checked["amp"] is None and checked["betas"] == (0.9, 0.99)
    with pytest.raises(SettingsError, match="--fold must be between 0 and 2 for --folds 3, got 3"):
        check_settings("training", {"dataset_dir": ".", "folds": 3, "fold": 3})


def test_nested_overrides_of_existing_ids_and_component_arguments_stay_allowed():
    from monai.bundle import ConfigParser

    config = ConfigParser.load_config_files(CONFIG_FILES)
    check_overrides(config, ["epochs", "train#trainer#max_epochs", "train::handlers::1::seed",
                             "train#trainer#epoch_length", "train#dataloader#_disabled_", "_meta_#version"])
    with pytest.raises(SettingsError, match=r"--train#handlers#99 \(did you mean"):
        check_overrides(config, ["train#handlers#99"])
    with pytest.raises(SettingsError, match=r"--train#trainer#epoch_lenght \(did you mean --train#trainer#epoch_length"):
        check_overrides(config, ["train#trainer#epoch_lenght"])  # SupervisedTrainer's own arguments are known


@pytest.mark.parametrize("kind, workflow", [("train", "training"), ("evaluate", "evaluate"),
                                            ("inference", "inference")])
def test_every_config_checks_all_its_settings_first(kind, workflow):
    """Each config's `settings` lists exactly its top-level settings, every plain top-level value is a known
    setting (a new one cannot skip the check), and `initialize` checks them before anything else."""
    from cxrkit.bundle.render import BundleParams, render_config

    config = yaml.safe_load(render_config(kind, BundleParams("random")))
    plain = {k for k, v in config.items() if k not in ("settings", "imports", "run")
             and not (isinstance(v, str) and v.startswith(("$", "@"))) and not isinstance(v, dict)
             and not (isinstance(v, list) and k != "betas")}
    assert plain <= set(SETTINGS), f"{kind}.yaml settings without a reader: {sorted(plain - set(SETTINGS))}"
    listed = set(config["settings"])
    assert plain <= listed <= set(SETTINGS) and all(config["settings"][k] == f"@{k}" for k in listed)
    assert config["initialize"][0] == f"$workflow.check_settings('{workflow}', @settings)"


def test_monai_runner_command_line_is_checked_too(small_data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIG_FILES,
         "--meta_file", str(BUNDLE / "configs" / "metadata.json"), "--bundle_root", str(BUNDLE), "--dataset", "csv", "--dataset_dir", str(small_data), "--output_dir", str(out),
         "--max-itemz", "4", "--device", "cpu"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "--max_itemz (did you mean --max_items?)" in proc.stderr
    assert not out.exists()


def test_runner_arguments_reads_only_monais_runner():
    config_file = CONFIG_FILES
    argv = ["/x/monai/bundle/__main__.py", "run", "training", "--config_file", config_file, "--meta_file", "m.json",
            "--epochs", "2", "--train::trainer::max_epochs", "2", "--logging_file", "l.conf", "--image-size", "3"]
    config, overrides = runner_arguments(argv)
    assert "epochs" in config and overrides == ["epochs", "train#trainer#max_epochs", "image_size"]
    assert runner_arguments(["/usr/bin/cxrkit", "run", "training", "--config_file", config_file]) is None


def test_training_passes_adapter_options_to_the_dataset(tmp_path, capsys):
    """A partly downloaded CoronaHack trains with allow_missing; Cohen's view filter reaches the adapter."""
    import json

    from support.paths import shared_data

    from cxrkit.data import load_dataset

    coronahack = shared_data("coronahack")
    out = tmp_path / "coronahack"
    base = ["run", "training", str(BUNDLE), "--dataset", "coronahack", "--dataset_dir", str(coronahack),
            "--task", "normal_vs_pneumonia", "--image_size", "32", "--epochs", "1", "--batch_size", "8",
            "--device", "cpu", "--progress", "false", "--tensorboard_images", "0"]
    assert main([*base, "--output_dir", str(out)]) != 0  # most CSV rows have no image here
    assert "--dataset_options '{allow_missing: true}'" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--output_dir", str(out), "--dataset_options", "{allow_missing: true}"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = load_dataset("coronahack", coronahack, "normal_vs_pneumonia", allow_missing=True)
    assert sum(sum(part.values()) for part in summary["counts"].values()) == len(expected.items)

    cohen = shared_data("cohen")
    bad = tmp_path / "bad"
    assert main([*base[:3], "--dataset", "cohen", "--dataset_dir", str(cohen), "--output_dir", str(bad),
                 "--dataset_options", "{view: PA}"]) != 0
    assert "cohen: unknown option(s) view; options: views" in capsys.readouterr().err and not bad.exists()
