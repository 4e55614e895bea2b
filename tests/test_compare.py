"""`cxrkit compare` (fine-tuning): one split for every plugin, skipped plugins, the ranked report, k-fold splits.

Runs on the real radiography sample at 32 px, 1 epoch, a dozen images. The
pretrained plugin's weight file is fabricated in its real layout (see
support/weights.py) in a temporary weights folder; HOME is a temporary
folder too, so no file of the machine is found or written.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import yaml

from cxrkit.cli import CLIError, compare_cmd
from cxrkit.engine.prepare import prepare_data
from cxrkit.experiment.compare import CompareError, CompareSettings, plan_plugins, resolve_plugins
from support.paths import RADIOGRAPHY, shared_data
from support.runfolders import md_tables


def compare_cli(argv: list[str]) -> int:
    """``cxrkit compare ARGS`` through the subcommand's own parser."""
    parser = argparse.ArgumentParser(prog="cxrkit")
    compare_cmd.add_parser(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args(["compare", *argv])
    args.overrides = extra  # as cxrkit.cli.main hands them on: the dataset adapter's options
    return args.func(args)


def test_plan_skips_absent_files_with_the_fetch_command(isolated, weights_store):
    plans = {p.plugin: p for p in plan_plugins(["random", "inat_swav", "swav"])}
    assert plans["random"].skipped is None and plans["random"].weights_path is None
    assert plans["inat_swav"].skipped is None
    assert plans["inat_swav"].weights_path == str((weights_store / "inat_swav" / "inat2021_swav_mini_1000_ep.pth")
                                                  .resolve())
    assert "`cxrkit weights fetch swav --accept_license`" in plans["swav"].skipped
    assert "cxrkit weights import swav /path/to/swav_800ep_pretrain.pth.tar" in plans["swav"].skipped
    assert resolve_plugins("random, inat_swav") == ["random", "inat_swav"]
    assert "random" in resolve_plugins("all") and "swav" in resolve_plugins(["all"])
    with pytest.raises(CompareError, match="unknown weight plugin.*nope"):
        resolve_plugins("random,nope")


def test_bad_settings_are_clear_errors(isolated):
    with pytest.raises(CompareError, match="--folds must be at least 2"):
        CompareSettings("radiography", str(isolated), folds=1).check()
    with pytest.raises(CompareError, match="--dataset_dir .*no such folder"):
        CompareSettings("radiography", str(isolated / "missing")).check()
    root = str(shared_data(*RADIOGRAPHY))
    with pytest.raises(CLIError, match="no plugin can run: swav: weight file"):
        compare_cli(["--root", root, "--plugins", "swav", "--out", str(isolated / "c"), "--no_progress"])


def test_kfold_splits_are_recorded_and_disjoint(isolated):
    root = shared_data(*RADIOGRAPHY)
    parts = [prepare_data("radiography", root, max_items=20, progress=False, folds=2, fold=k) for k in (0, 1)]
    vals = [{it["image"] for it in p.val} for p in parts]
    tests = [{it["image"] for it in p.test} for p in parts]
    assert tests[0] == tests[1] and len(tests[0]) == 4  # one held-out test part, shared by every fold
    assert vals[0].isdisjoint(vals[1]) and len(vals[0] | vals[1]) == 16 and not (vals[0] | vals[1]) & tests[0]
    assert [p.split.manifest["fold"] for p in parts] == [0, 1]
    assert all(p.split.manifest["folds"] == 2 for p in parts)
    with pytest.raises(ValueError, match="--fold must be between 0 and 1"):
        prepare_data("radiography", root, max_items=20, progress=False, folds=2, fold=2)


def test_compare_finetune_two_plugins_one_split(isolated, capsys):
    root = shared_data(*RADIOGRAPHY)
    out = isolated / "cmp"
    code = compare_cli(["--dataset", "radiography", "--root", str(root), "--plugins", "random,inat_swav,swav",
                        "--epochs", "1", "--image_size", "32", "--batch_size", "4", "--max_items", "12",
                        "--out", str(out), "--device", "cpu", "--bootstrap", "50", "--no_progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and str(out / "comparison.md") in printed
    # one console line per source, none per epoch (each run's whole log: its log.txt)
    assert re.search(r"^inat_swav +finished +\d+\.\d s  best epoch \d+: val accuracy \S+ AUC \S+  test accuracy",
                     printed, re.M), printed
    assert re.search(r"^swav +skipped ", printed, re.M) and "epoch 1/" not in printed and "tensor(" not in printed
    assert "Metrics --" in (out / "runs" / "inat_swav" / "log.txt").read_text()

    # one split, written once, used by every run
    split = json.loads((out / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 12 and len(split["test"]) >= 2
    for plugin in ("random", "inat_swav"):
        run = out / "runs" / plugin
        assert json.loads((run / "split.json").read_text()) == split
        assert (run / "models" / "model.pt").is_file() and (run / "test" / "predictions.csv").is_file()
        metrics = json.loads((run / "metrics.json").read_text())
        assert [row["epoch"] for row in metrics["epochs"]] == [1]
        config = yaml.safe_load((run / "configs" / "train.yaml").read_text())
        assert config["split_manifest"] == str(out / "split.json") and config["plugin"] == plugin
    weights = json.loads((out / "runs" / "inat_swav" / "weights.json").read_text())
    assert weights["pretrained"] is True and weights["path"].endswith("inat2021_swav_mini_1000_ep.pth")
    assert not (out / "runs" / "swav").exists()

    # the report ranks both sources and lists the skipped one with its import command
    text = (out / "comparison.md").read_text()
    ranking = md_tables(text)["Ranking (test images)"][0]
    assert [row[0] for row in ranking[1:]] == ["1", "2"]
    assert sorted(row[1] for row in ranking[1:]) == ["inat_swav", "random"]
    skipped = text.split("## Skipped sources", 1)[1]
    assert "**swav**" in skipped and "cxrkit weights import swav" in skipped
    record = json.loads((out / "compare.json").read_text())
    assert [r["status"] for r in record["runs"]] == ["finished", "finished"]
    assert set(record["skipped"]) == {"swav"}


def test_compare_passes_adapter_options_and_skips_bad_images(isolated, tmp_path, capsys):
    """``--views PA`` reaches the cohen adapter; ``--skip_bad_images`` leaves a broken file out of the split."""
    import shutil

    from cxrkit.cli import main
    from cxrkit.data import load_dataset

    cohen = shared_data("cohen")
    common = ["--plugins", "random", "--epochs", "1", "--image_size", "32", "--batch_size", "4", "--device", "cpu",
              "--bootstrap", "0", "--no_progress"]
    out = isolated / "cohen"
    assert main(["compare", "--dataset", "cohen", "--dataset_dir", str(cohen), "--task", "covid_vs_rest",
                 "--output_dir", str(out), "--views", "PA", *common]) == 0
    split = json.loads((out / "split.json").read_text())
    expected = load_dataset("cohen", cohen, "covid_vs_rest", views="PA")
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == len(expected.items)
    assert (out / "runs" / "random" / "models" / "model.pt").is_file()

    data = tmp_path / "radiography"
    for cls in ("COVID", "Normal"):
        (data / cls).mkdir(parents=True)
        for image in sorted((shared_data(*RADIOGRAPHY) / cls).glob("*.png"))[:6]:
            shutil.copy(image, data / cls / image.name)
    broken = data / "COVID" / "COVID-99999.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))  # a PNG cut off after its signature
    capsys.readouterr()
    assert main(["compare", "--dataset_dir", str(data), "--output_dir", str(isolated / "bad"), *common]) == 1
    error = capsys.readouterr().err
    assert str(broken) in error and "--skip_bad_images" in error
    assert main(["compare", "--dataset_dir", str(data), "--output_dir", str(isolated / "skip"), "--skip_bad_images",
                 *common]) == 0
    split = json.loads((isolated / "skip" / "split.json").read_text())
    images = [item["image"] for part in ("train", "val", "test") for item in split[part]]
    assert len(images) == 12 and not any("COVID-99999" in str(i) for i in images)  # 6 + 6 readable
    assert main(["compare", "--dataset_dir", str(data), "--output_dir", str(isolated / "x"), "--nope"]) != 0
    assert "nope" in capsys.readouterr().err
