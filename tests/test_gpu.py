"""Every path on a CUDA GPU: training and validation, evaluation, inference, prediction with Grad-CAM, export,
comparison (fine-tuning and linear probe), resume (also of a GPU checkpoint on a CPU-only process), the MONAI
Label infer task, the review page's evidence, the image cache on the GPU, background checkpoints and the benchmark.

``pytest -m gpu`` runs them; without CUDA they are skipped with the reason. Synthetic data only (64 px, a few
dozen images from :mod:`cxrkit.demo`), one or two epochs: the whole file takes about a minute on an H100.
Before the labels-follow-predictions fix (commit 773274f) every one of them that trains or validates failed
with "Expected all tensors to be on the same device".
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine

from cxrkit.api import predict
from cxrkit.cli import main
from support.gpu import GPU
from support.paths import REPO

pytestmark = GPU

BUNDLE = REPO / "bundles" / "random"
CUDA = torch.device("cuda")


def _train(data: Path, out: Path, *extra: str, epochs: int = 2) -> Path:
    args = ["run", "training", str(BUNDLE), "--dataset_dir", str(data), "--image_size", "64", "--batch_size", "8",
            "--epochs", str(epochs), "--output_dir", str(out), "--device", "cuda", "--progress", "false",
            "--seed", "3", *extra]
    assert main(args) == 0
    return out


def _rows(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["epochs"]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    from cxrkit.demo import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), per_class=16, size=64, seed=0)


@pytest.fixture(scope="module")
def gpu_run(synthetic, tmp_path_factory) -> Path:
    """Two epochs on the GPU: image cache on the GPU, augmentation, focal loss with class weights, AUC as the
    best metric, TensorBoard images, sample ids, a checkpoint every 2 epochs."""
    return _train(synthetic, tmp_path_factory.mktemp("gpu") / "run", "--cache", "true", "--augment", "true",
                  "--loss", "focal", "--best_metric", "val_auc", "--tensorboard_images", "4",
                  "--record_sample_ids", "true", "--checkpoint_interval", "2")


def test_outputs_and_labels_meet_on_the_gpu_in_metrics_and_losses():
    from cxrkit.engine.losses import build_loss
    from cxrkit.engine.metrics import classification_metrics, training_metrics

    loss = build_loss("focal", class_counts=[3, 9], class_names=["COVID", "Normal"], device=CUDA)
    assert loss.class_weight.device.type == "cuda"
    logits = torch.randn(6, 2, device=CUDA)
    labels = torch.tensor([0, 1, 1, 0, 1, 1], device=CUDA)
    assert torch.isfinite(loss(logits, labels))
    # MONAI's decollated output: logits on the GPU, labels as Python numbers
    decollated = [{"pred": logits[i], "label": int(labels[i])} for i in range(6)]
    evaluator = Engine(lambda engine, batch: decollated)
    for name, metric in classification_metrics(["COVID", "Normal"], loss_function=loss).items():
        metric.attach(evaluator, name)
    trainer = Engine(lambda engine, batch: {"pred": logits, "label": labels, "loss": torch.tensor(0.5, device=CUDA)})
    for name, metric in training_metrics(device=CUDA).items():
        metric.attach(trainer, name)
    evaluator.run([0], max_epochs=1)
    trainer.run([0], max_epochs=1)
    expected = float((logits.argmax(1) == labels).float().mean())
    assert evaluator.state.metrics["val_accuracy"] == pytest.approx(expected)
    assert trainer.state.metrics["train_accuracy"] == pytest.approx(expected)


def test_the_image_cache_lives_on_the_gpu_or_in_pinned_memory_and_matches_the_cpu(synthetic):
    from cxrkit.data import build_transforms
    from cxrkit.data.imagecache import DecodedImages, ImageCache
    from cxrkit.engine.loaders import make_dataset, make_loader
    from cxrkit.weights import get_source

    files = sorted(synthetic.glob("*/*.png"))
    items = [{"image": str(f), "label": int(f.parent.name == "Normal"), "index": i} for i, f in enumerate(files)]
    chain = build_transforms(get_source("random"), 64, train=True, augment=True)
    on_gpu = make_dataset(items, chain, cache=True, device=CUDA, seed=2)
    assert on_gpu.cache.placement == "cuda" and on_gpu.cache.images.is_cuda
    on_cpu = make_dataset(items, chain, cache=True, device="cpu", seed=2)
    for a, b in zip(make_loader(on_gpu, 8, shuffle=True, seed=2, device=CUDA),
                    make_loader(on_cpu, 8, shuffle=True, seed=2, device="cpu"), strict=True):
        assert a["image"].is_cuda and a["label"].is_cuda and a["image"].dtype == torch.float32
        assert a["image"].is_contiguous(memory_format=torch.channels_last)  # as the network on a GPU
        assert a["index"].tolist() == b["index"].tolist()
        torch.testing.assert_close(a["image"].cpu(), b["image"], atol=1e-4, rtol=0)  # augmentation included
    pinned = ImageCache.fill(DecodedImages(items, chain.decode_part()), CUDA, progress=False, free_bytes=1)
    assert pinned.placement == "pinned" and pinned.images.is_pinned()
    assert torch.equal(pinned.images, on_gpu.cache.images.cpu())


def test_background_checkpoint_of_gpu_tensors_holds_the_state_when_it_was_taken(tmp_path):
    from cxrkit.engine.background import BackgroundWriter
    from cxrkit.engine.resume import AtomicDiskSaver

    weights = torch.zeros(4_000_000, device=CUDA)
    writer = BackgroundWriter()
    AtomicDiskSaver(tmp_path, writer=writer)({"model": {"w": weights}}, "ckpt.pt")
    weights.fill_(7.0)  # the next training step changes the weights at once
    writer.wait()
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)["model"]["w"]
    assert saved.device.type == "cpu" and float(saved.abs().max()) == 0.0


def test_training_on_the_gpu_validates_records_and_writes_device_free_checkpoints(gpu_run):
    rows = _rows(gpu_run)
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= row["val_accuracy"] <= 1.0 and row["val_loss"] == row["val_loss"] and "val_auc" in row
        assert row["train_loss"] == row["train_loss"]
    summary = json.loads((gpu_run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_metric"] == "val_auc"
    n_val = sum(summary["counts"]["val"].values())
    with (gpu_run / "predictions.csv").open(newline="") as fh:
        assert len(list(csv.DictReader(fh))) == n_val
    ids = json.loads((gpu_run / "debug" / "sample_ids_rank0.json").read_text())["epochs"]
    assert len(ids["1"]) == len(ids["2"]) > 0 and ids["1"] != ids["2"]  # a new order every epoch
    assert list((gpu_run / "tensorboard").glob("events.out.tfevents.*"))
    checkpoint = torch.load(gpu_run / "models" / "checkpoint_last.pt", weights_only=True)  # no map_location
    model = torch.load(gpu_run / "models" / "model.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in [*_tensors(checkpoint), *_tensors(model)])
    assert checkpoint["trainer"]["iteration"] == 2 * checkpoint["trainer"]["epoch_length"]
    assert "cuda" in checkpoint["rng"]


def test_uncached_training_with_automatic_workers_resumes_exactly_on_the_gpu(synthetic, tmp_path):
    from cxrkit.engine.hardware import loader_workers

    assert loader_workers("auto", CUDA) >= 1
    common = ("--augment", "true", "--deterministic", "true", "--record_sample_ids", "true")
    straight = _train(synthetic, tmp_path / "straight", *common)
    broken = _train(synthetic, tmp_path / "broken", *common, epochs=1)
    assert main(["run", "training", str(BUNDLE), "--resume", str(broken), "--epochs", "2", "--device", "cuda"]) == 0
    ids = [json.loads((run / "debug" / "sample_ids_rank0.json").read_text())["epochs"] for run in (straight, broken)]
    assert ids[0]["2"] == ids[1]["2"]  # the resumed epoch reads the same data in the same order
    a = torch.load(straight / "models" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(broken / "models" / "checkpoint_last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a if a[k].is_floating_point()])
    # deterministic cuDNN: equal; a GPU kernel that still sums in a free order could flip a rare near-zero gradient
    # (an Adam step of 2e-3 on that weight), never move the weights as other data or augmentation would
    assert float(diff.mean()) < 1e-6 and float((diff > 1e-5).double().mean()) < 1e-3


def test_a_gpu_checkpoint_resumes_in_a_process_without_cuda(gpu_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(gpu_run, run)
    for name in ("checkpoint_last.pt", "model.pt"):  # as an older cxrkit wrote them: tensors stored on the GPU
        state = torch.load(run / "models" / name, map_location="cuda", weights_only=True)
        torch.save(state, run / "models" / name)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "cxrkit", "run", "training", str(BUNDLE), "--resume", str(run),
                           "--output_dir", str(run), "--epochs", "3", "--device", "cpu", "--progress", "false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]


def test_evaluate_inference_predict_cam_export_and_review_evidence_on_the_gpu(gpu_run, synthetic, tmp_path):
    from cxrkit.review.evidence import LocalExplainer, read_image_bytes
    from cxrkit.serve.export import export_torchscript

    assert main(["run", "evaluate", str(gpu_run), "--dataset_dir", str(synthetic), "--subset", "val", "--device",
                 "cuda", "--progress", "false", "--output_dir", str(tmp_path / "evaluation")]) == 0
    evaluated = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert evaluated["n_images"] > 0 and 0.0 <= evaluated["metrics"]["accuracy"] <= 1.0

    images = tmp_path / "images"
    images.mkdir()
    for f in sorted(synthetic.glob("*/*.png"))[::8]:
        shutil.copy(f, images / f.name)
    out = tmp_path / "predictions.csv"
    assert main(["run", "inference", str(gpu_run), "--input", str(images), "--output_file", str(out),
                 "--batch_size", "2", "--device", "cuda"]) == 0
    with out.open(newline="") as fh:
        rows = {Path(r["image"]).name: [float(r["prob_0"]), float(r["prob_1"])] for r in csv.DictReader(fh)}
    result = predict(gpu_run, [images], device="cuda", batch_size=2, cam_dir=tmp_path / "cams")
    assert len(result.predictions) == len(rows) == 4 and not result.failures
    for p in result.predictions:
        assert rows[Path(p.file).name] == pytest.approx([p.probabilities[c] for c in result.classes], abs=1e-4)
        assert Path(p.cam_file).is_file()

    exported = export_torchscript(gpu_run, tmp_path / "model.ts")
    assert exported.path.is_file() and exported.max_abs_diff < 1e-3

    explainer = LocalExplainer(gpu_run, device="cuda")
    data = (images / sorted(rows)[0]).read_bytes()
    cam = explainer(data, ".png", 0)
    assert cam.shape == read_image_bytes(data, ".png").shape and 0.0 <= cam.min() and cam.max() <= 1.0


def test_monai_label_infer_task_answers_on_the_gpu(gpu_run, synthetic):
    pytest.importorskip("monailabel", reason="MONAI Label is not installed (pip install -e \".[label]\")")
    from cxrkit.label.app.lib.infers import CXRClassificationInfer

    image = sorted(synthetic.glob("COVID/*.png"))[0]
    expected = predict(gpu_run, [image], device="cuda").predictions[0]
    _, answer = CXRClassificationInfer(str(gpu_run), {})({"image": str(image), "device": "cuda", "cam": True})
    assert [p["score"] for p in answer["prediction"]] == pytest.approx(list(expected.probabilities.values()), abs=1e-4)
    assert answer["cam"]["shape"] == [64, 64]


def test_compare_fine_tuning_and_linear_probe_on_the_gpu(synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for mode in ("finetune", "linear_probe"):
        out = tmp_path / mode
        assert main(["compare", "--dataset_dir", str(synthetic), "--plugins", "random", "--mode", mode,
                     "--epochs", "1", "--image_size", "64", "--batch_size", "8", "--output_dir", str(out),
                     "--device", "cuda", "--bootstrap", "20", "--feature_cache", str(tmp_path / "features"),
                     "--no_progress"]) == 0
        assert (out / "comparison.md").is_file()
        assert json.loads((out / "runs" / "random" / "summary.json").read_text())["status"] == "finished"


def test_benchmark_on_the_gpu_prints_the_table5_estimate_and_targets(tmp_path, capsys):
    from cxrkit.bench.__main__ import main as bench_main

    out = tmp_path / "out"
    assert bench_main(["--output_dir", str(out), "--device", "cuda", "--image_size", "64", "--batch_size", "8",
                       "--steps", "3", "--warmup", "2", "--rounds", "1", "--inference_size", "64",
                       "--inference_repeats", "1", "--whole_run_epochs", "2", "--skip", "linear_probe",
                       "--work_dir", str(tmp_path / "work")]) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "benchmark.json").read_text())
    assert results["settings"]["device_type"] == "cuda" and results["settings"]["cudnn"] == "autotuned"
    assert "cuda" in results["settings"]["cache"]  # the trainer read an image cache on the GPU
    assert results["settings"]["uncached_workers"] >= 1
    assert set(results["data_wait"]) == {"uncached", "cached"} and results["whole_run"]["images_per_s"] > 0
    assert "Table 5 protocol estimate" in printed and ("PASS " in printed or "FAIL " in printed)
    assert {row["status"] for row in results["targets"]} <= {"PASS", "FAIL", "n/a"}
