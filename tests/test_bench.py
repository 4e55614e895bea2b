"""The benchmark runs and writes its outputs; inference optimisation keeps predictions; timing and targets.

No test here depends on how fast anything is: target values are checked by
``python -m cxrkit.bench``, not by tests.
"""

from __future__ import annotations

import json

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from cxrkit.bench.__main__ import main as bench_main
from cxrkit.bench.report import check_targets, markdown, summary_lines
from cxrkit.bench.timing import StepTimer, best_round, summarize
from cxrkit.engine.inference import OptimizeForInference, fold_batchnorm, optimize_for_inference
from cxrkit.engine.hardware import amp_enabled, amp_kwargs, place_network
from cxrkit.networks.classifier import CXRClassifier


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = CXRClassifier("random", 2, pretrained=False)
    # non-trivial batch-norm statistics, as after training
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def test_optimize_for_inference_keeps_predictions_and_folds_every_batch_norm():
    model = _model()
    images = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = model(images)
    same = optimize_for_inference(model)
    assert same is model and not model.training
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # ResNet50: all 53 folded
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(p.requires_grad for p in model.parameters())
    with torch.inference_mode():
        got = model(images)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert fold_batchnorm(model) == 0  # nothing left to fold


def test_fold_batchnorm_leaves_a_shared_convolution_alone():
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv output is used twice: folding would change the result

    assert fold_batchnorm(Branching().eval()) == 0


def test_inference_handler_runs_once_at_start():
    model = _model()
    handler = OptimizeForInference(model)
    engine = Engine(lambda e, b: None)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    engine.run([0], max_epochs=1)  # a second run does not fail
    with pytest.raises(TypeError, match="torch.nn.Module"):
        OptimizeForInference("model")


def test_amp_and_memory_format_settings():
    cpu = torch.device("cpu")
    assert amp_enabled("auto", cpu) is False and amp_kwargs("auto", cpu) == {}
    assert amp_enabled(False, cpu) is False
    with pytest.raises(ValueError, match="needs a CUDA device"):
        amp_enabled(True, cpu)
    net = place_network(nn.Conv2d(3, 4, 3), cpu, "auto")
    assert net.weight.is_contiguous()  # auto: channels_last on CUDA only
    net = place_network(nn.Conv2d(3, 4, 3), cpu, True)
    assert net.weight.is_contiguous(memory_format=torch.channels_last)


def test_step_timer_measures_steps_after_warmup_and_data_wait():
    timer = StepTimer(warmup=2)
    engine = Engine(lambda e, b: sum(range(20000)))
    timer.attach(engine)
    engine.run(list(range(6)), max_epochs=1)
    stats = timer.stats(batch_size=4)
    assert stats.steps == 4 and stats.median_step_s > 0 and 0 <= stats.data_wait_share < 1
    assert stats.images_per_s == pytest.approx(4 / stats.median_step_s)
    with pytest.raises(ValueError, match="no step was measured"):
        summarize([], [], 4)
    engine.run(list(range(6)), max_epochs=2)  # one more epoch: a second round
    assert len(timer.rounds) == 2 and timer.stats(4).steps == 8 and timer.stats(4, best=True).steps == 4
    fast = best_round([([3.0, 3.0], [0.1, 0.1]), ([1.0, 2.0, 1.0], [0.5, 0.0, 0.0])], batch_size=2)
    assert fast.median_step_s == 1.0 and fast.images_per_s == 2.0 and fast.data_wait_share == pytest.approx(0.125)
    with pytest.raises(ValueError, match="warmup"):
        StepTimer(warmup=-1)


def test_targets_pass_fail_and_not_applicable():
    results = {
        "settings": {"device_type": "cpu", "device": "cpu", "image_size": 128, "inference_size": 224,
                     "batch_size": 16},
        "training": {"trainer_over_plain": 0.94, "trainer": {"images_per_s": 20.0}},
        "data_wait": {"cached": {"data_wait_share": 0.01}, "uncached": {"data_wait_share": 0.4}},
        "inference": {"optimized": {"batch_16": 15.5}},
        "whole_run": {"over_step": 0.5, "table5_estimate_min": 900.0, "images_per_s": 10.0},
    }
    status = {row["target"]: row["status"] for row in check_targets(results)}
    assert status == {"trainer_vs_plain": "FAIL", "gpu_trainer_vs_plain": "n/a", "data_wait_cached": "PASS",
                      "data_wait_uncached": "n/a", "cpu_inference": "PASS", "gpu_training": "n/a",
                      "whole_run": "n/a", "table5_minutes": "n/a"}
    results["settings"]["inference_size"] = 64  # the CPU target is defined at 224 px
    assert {r["target"]: r["status"] for r in check_targets(results)}["cpu_inference"] == "n/a"
    gpu = dict(results, settings={"device_type": "cuda", "device": "cuda:0", "image_size": 224, "inference_size": 224,
                                  "batch_size": 256},
               training={"trainer_over_plain": 0.98, "trainer": {"images_per_s": 4100.0}},
               whole_run={"over_step": 0.9, "table5_estimate_min": 14.0, "images_per_s": 3690.0})
    status = {row["target"]: row["status"] for row in check_targets(gpu)}
    assert status == {"trainer_vs_plain": "n/a", "gpu_trainer_vs_plain": "PASS", "data_wait_cached": "PASS",
                      "data_wait_uncached": "FAIL", "cpu_inference": "n/a", "gpu_training": "PASS",
                      "whole_run": "PASS", "table5_minutes": "PASS"}
    gpu["targets"] = check_targets(gpu)
    lines = summary_lines(gpu)
    assert lines[0].startswith("Table 5 protocol estimate") and "14.0 min" in lines[0]
    assert any(line.startswith("FAIL data_wait_uncached: 0.400 (") for line in lines)
    assert sum(line.startswith("PASS ") for line in lines) == 5


@pytest.mark.slow
def test_benchmark_smoke_writes_json_markdown_and_ratio(tmp_path, capsys):
    out = tmp_path / "out"
    rc = bench_main(["--output", str(out), "--image_size", "32", "--batch_size", "2", "--steps", "1",
                     "--warmup", "1", "--rounds", "1", "--device", "cpu", "--inference_size", "32", "--inference_repeats", "1",
                     "--whole_run_epochs", "2",
                     "--workdir", str(tmp_path / "work")])
    printed = capsys.readouterr().out
    assert rc == 0
    results = json.loads((out / "benchmark.json").read_text())
    ratio = results["training"]["trainer_over_plain"]
    assert ratio > 0 and f"trainer/plain ratio: {ratio:.2f}" in printed
    assert results["training"]["trainer"]["steps"] == 1 and results["training"]["plain"]["steps"] == 1
    assert results["training"]["all_rounds"]["trainer"]["steps"] == 1
    assert set(results["data_wait"]) == {"uncached", "cached"} and results["settings"]["uncached_workers"] == 0
    assert set(results["inference"]) == {"plain", "optimized"}
    assert set(results["inference"]["optimized"]) == {"batch_1", "batch_16"}
    assert results["linear_probe"]["probe_epoch_s"] > 0
    whole = results["whole_run"]
    assert whole["epochs"] == 2 and whole["train_images"] > whole["val_images"] > 0 and whole["images_per_s"] > 0
    assert whole["over_step"] > 0 and whole["table5_estimate_min"] > 0
    assert "Table 5 protocol estimate (10 sources x 50 epochs x 5,809 images, 80/20) on cpu: " in printed
    assert (tmp_path / "work" / "whole-run" / "models" / "checkpoint_last.pt").is_file()
    assert {row["status"] for row in results["targets"]} <= {"PASS", "FAIL", "n/a"}
    table = (out / "benchmark.md").read_text()
    assert table == markdown(results) and "| target | value | status |" in table
    # the trainer is the real bundle trainer: it wrote a run folder
    assert (tmp_path / "work" / "run" / "metrics.json").is_file()
    assert bench_main(["--output", str(out), "--steps", "0"]) == 2  # bad input: a clear error, exit 2
