"""Linear-probe mode: cached features (hit, miss when the weights change), a complete run folder whose
predictions are the saved model's, a failing plugin reported while the others go on, and k-fold comparisons."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import cxrkit.experiment.linear_probe as linear_probe
from cxrkit.bundle.runner import run_bundle
from cxrkit.data.transforms import build_transforms
from cxrkit.experiment.compare import CompareSettings, run_comparison
from cxrkit.experiment.features import FeatureCache, FeatureKey
from cxrkit.networks.classifier import CXRClassifier
from cxrkit.report.runfolder import load_run
from cxrkit.weights import get_source
from support.paths import RADIOGRAPHY, shared_data
from support.runfolders import md_tables
from support.training import write_inat_swav
from support.weights import LAYOUTS

# the corrupt moco_v2 file cannot match the published md5; the mismatch warning is tested in test_weights_errors
pytestmark = pytest.mark.filterwarnings("ignore::cxrkit.weights.WeightHashWarning")

CONTRACT = ["configs/train.yaml", "configs/inference.yaml", "configs/evaluate.yaml", "configs/metadata.json",
            "configs/logging.conf", "models/model.pt", "models/checkpoint_last.pt", "split.json", "weights.json",
            "metrics.json", "metrics.csv", "predictions.csv", "versions.json", "summary.json"]


@pytest.fixture
def forward_calls(monkeypatch) -> list[str]:
    """Counts the backbone feature passes of the linear probe (one entry per computed feature matrix)."""
    calls: list[str] = []
    real = linear_probe.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("desc", "?"))
        return real(*args, **kwargs)

    monkeypatch.setattr(linear_probe, "extract_features", counting)
    return calls


def settings(out: Path, **kwargs) -> CompareSettings:
    values = dict(dataset="radiography", dataset_dir=str(shared_data(*RADIOGRAPHY)), mode="linear_probe",
                  output_dir=str(out),
                  epochs=2, image_size=32, batch_size=4, max_items=12, device="cpu", bootstrap=0, progress=False)
    values.update(kwargs)
    return CompareSettings(**values)


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_linear_probe_caches_features_and_reports_failures(isolated, forward_calls):
    broken = isolated / "extra" / "moco_v2" / "moco_v2_800ep_pretrain.pth.tar"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a checkpoint")
    first = run_comparison(settings(isolated / "one", plugins=["random,inat_swav,moco_v2,swav"],
                                    weights_dir=str(isolated / "extra")))
    assert sorted(forward_calls) == ["inat_swav features", "random features"]
    assert [(r.plugin, r.status, r.cache_hit) for r in first.runs] == [
        ("random", "finished", False), ("inat_swav", "finished", False), ("moco_v2", "failed", None)]
    assert first.runs[2].error.startswith("CorruptCheckpointError: ") and "not a PyTorch checkpoint" in first.runs[2].error
    text = first.report.read_text()
    assert sorted(row[1] for row in md_tables(text)["Ranking (test images)"][0][1:]) == ["inat_swav", "random"]
    skipped = text.split("## Skipped sources", 1)[1]
    assert "**moco_v2**: run failed" in skipped and "cxrkit weights import swav" in skipped

    # a second comparison on the same images: no backbone forward pass at all
    forward_calls.clear()
    second = run_comparison(settings(isolated / "two", plugins=["random", "inat_swav"]))
    assert forward_calls == []
    assert [r.cache_hit for r in second.runs] == [True, True]
    for run in second.runs:
        summary = json.loads((Path(run.run_dir) / "summary.json").read_text())
        assert summary["linear_probe"]["cache_hit"] is True and summary["status"] == "finished"
        # the same features, seed and split give the same head
        again = read_predictions(Path(run.run_dir) / "predictions.csv")
        before = read_predictions(isolated / "one" / "runs" / run.plugin / "predictions.csv")
        assert [r["prob_0"] for r in again] == [r["prob_0"] for r in before]


def test_linear_probe_run_folder_is_complete_and_predictions_are_the_models(isolated):
    result = run_comparison(settings(isolated / "c", plugins=["inat_swav"], epochs=2))
    run_dir = Path(result.runs[0].run_dir)
    for rel in CONTRACT:
        assert (run_dir / rel).is_file(), rel
    assert any((run_dir / "tensorboard").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["classes"] == ["COVID", "Normal"] and metrics["positive_class"] == "COVID"
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_auc", "val_sensitivity/COVID"):
        assert all(np.isfinite(r[key]) for r in metrics["epochs"]), key
    # the converged probe is fitted once: every epoch reports the same model, its C chosen on validation
    assert metrics["epochs"][0]["val_loss"] == metrics["epochs"][1]["val_loss"]
    probe = json.loads((run_dir / "summary.json").read_text())["linear_probe"]
    assert probe["val_accuracy_by_C"][f"{probe['C']:g}"] == max(probe["val_accuracy_by_C"].values())
    meta = json.loads((run_dir / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "COVID", "1": "Normal"}
    inference = yaml.safe_load((run_dir / "configs" / "inference.yaml").read_text())
    assert inference["head"] == "linear" and inference["plugin"] == "inat_swav" and inference["image_size"] == 32
    train = yaml.safe_load((run_dir / "configs" / "train.yaml").read_text())
    assert train["mode"] == "linear_probe" and train["freeze_until"] == "all" and train["epochs"] == 2
    weights = json.loads((run_dir / "weights.json").read_text())
    assert weights["plugin"] == "inat_swav" and weights["pretrained"] is True and len(weights["sha256"]) == 64
    assert json.loads((run_dir / "split.json").read_text()) == json.loads((isolated / "c" / "split.json").read_text())

    # models/model.pt is the whole classifier (as the inference config builds it) and predicts predictions.csv
    model = CXRClassifier("inat_swav", 2, head="linear", pretrained=False)
    model.load_state_dict(torch.load(run_dir / "models" / "model.pt", weights_only=True))
    model.eval()
    rows = read_predictions(run_dir / "predictions.csv")
    root = Path(load_run(run_dir).split["root"])
    transform = build_transforms(get_source("inat_swav"), 32, train=False)
    images = torch.stack([transform({"image": str(root / r["image"])})["image"].as_tensor() for r in rows])
    with torch.no_grad():
        probs = torch.softmax(model(images), dim=1).numpy()
    saved = np.array([[float(r["prob_0"]), float(r["prob_1"])] for r in rows])
    np.testing.assert_allclose(probs, saved, atol=1e-5)
    assert [int(r["pred"]) for r in rows] == probs.argmax(1).tolist()
    assert len(rows) == len(load_run(run_dir).split["val"])

    # it is a bundle run folder: `cxrkit run training --resume` continues it (frozen backbone, linear head)
    # exactly as a 3-epoch linear probe on the cached features runs
    run_bundle("training", run_dir, {"resume": str(run_dir), "epochs": 3, "progress": False, "device": "cpu"})
    resumed = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    direct = run_comparison(settings(isolated / "c3", plugins=["inat_swav"], epochs=3))
    assert direct.runs[0].cache_hit
    straight = json.loads((Path(direct.runs[0].run_dir) / "metrics.json").read_text())["epochs"]
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([r[key] for r in resumed], [r[key] for r in straight], rtol=1e-4, err_msg=key)


def test_cache_key_changes_when_the_weight_file_changes(isolated, forward_calls):
    root = shared_data(*RADIOGRAPHY)
    items = [{"image": str(p), "label": 0} for p in sorted((root / "COVID").glob("*.png"))[:3]]
    cache = FeatureCache(isolated / "cache")
    source = get_source("inat_swav")
    path = write_inat_swav(isolated / "w", seed=0)

    def probe(file: Path):
        model = CXRClassifier("inat_swav", 2, head="linear", weights_path=str(file))
        return linear_probe.probe_features(model, items, str(root), source, 32, cache=cache, progress=False)

    feats, hit, first = probe(path)
    assert not hit and feats.shape == (3, 2048) and first.is_file()
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["key"]["architecture"] == "resnet50" and sidecar["key"]["image_size"] == 32
    again, hit, same = probe(path)
    assert hit and same == first and torch.equal(again, feats) and len(forward_calls) == 1

    other = write_inat_swav(isolated / "w2", seed=1)  # same name and layout, other weights
    feats2, hit, second = probe(other)
    assert not hit and second != first and not torch.equal(feats2, feats) and len(forward_calls) == 2

    # the key also depends on the preprocessing and on the images
    key = FeatureKey.create(weights_sha256="a" * 64, images=[i["image"] for i in items], root=root, source=source,
                            image_size=32)
    assert key.digest != FeatureKey.create(weights_sha256="a" * 64, images=[i["image"] for i in items], root=root,
                                           source=source, image_size=64).digest
    assert key.digest != FeatureKey.create(weights_sha256="a" * 64, images=[i["image"] for i in items[:2]],
                                           root=root, source=source, image_size=32).digest


def test_non_finite_features_are_a_clear_error(isolated):
    root = shared_data(*RADIOGRAPHY)
    items = [{"image": str(p), "label": 0} for p in sorted((root / "Normal").glob("*.png"))[:2]]
    # the layout tests' reference tensors are plain randn: negative batch-norm variances give NaN in eval mode
    path = LAYOUTS["inat_swav"].write(isolated / "randn")
    model = CXRClassifier("inat_swav", 2, head="linear", weights_path=str(path))
    cache = FeatureCache(isolated / "cache")
    with pytest.raises(ValueError, match=r"non-finite features for 2 of 2 images \(weights: .*inat2021_swav"):
        linear_probe.probe_features(model, items, str(root), get_source("inat_swav"), 32, cache=cache,
                                    progress=False)
    assert not list(cache.root.glob("*.pt")) if cache.root.exists() else True


def test_kfold_linear_probe_comparison(isolated, forward_calls):
    result = run_comparison(settings(isolated / "k", plugins=["random", "inat_swav"], folds=2))
    assert [p.name for p in result.splits] == ["split-fold0.json", "split-fold1.json"]
    assert [(r.plugin, r.fold, r.status) for r in result.runs] == [
        ("random", 0, "finished"), ("inat_swav", 0, "finished"), ("random", 1, "finished"),
        ("inat_swav", 1, "finished")]
    assert len(forward_calls) == 2  # fold 1 reuses fold 0's features (same images)
    splits = [json.loads(p.read_text()) for p in result.splits]
    vals = [{e["image"] for e in s["val"]} for s in splits]
    tests = [{e["image"] for e in s["test"]} for s in splits]
    assert tests[0] == tests[1] and tests[0] and not (vals[0] | vals[1]) & tests[0]
    assert vals[0].isdisjoint(vals[1]) and len(vals[0] | vals[1]) + len(tests[0]) == 12
    for run in result.runs:
        manifest = json.loads((Path(run.run_dir) / "split.json").read_text())
        assert manifest["fold"] == run.fold and manifest == splits[run.fold]
    tables = md_tables(result.report.read_text())
    assert sorted(row[1] for row in tables["Ranking (test images)"][0][1:]) == ["inat_swav", "random"]
    for plugin in ("random", "inat_swav"):
        rows = tables[plugin][0]
        assert [r[0] for r in rows[1:]] == ["0", "1", "mean ± std", "pooled"]
        assert all("±" in cell for cell in rows[3][2:-1])
