"""Resume: a run interrupted mid-epoch and resumed ends exactly like an uninterrupted one.

Also: an exception keeps the last good checkpoint and marks the run failed, and
the run folder refuses to be overwritten or resumed without a checkpoint.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from cxrkit.cli import main
from cxrkit.engine import workflow
from cxrkit.engine.background import BackgroundWriter
from cxrkit.runfolder import RunDirError, RunPaths
from support.paths import REPO, shared_data

pytestmark = pytest.mark.slow


def _args(dataset: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return [
        "run", "training", str(REPO / "bundles" / "random"),
        "--dataset_dir", str(dataset), "--max_items", "16", "--image_size", "32", "--batch_size", "8",
        "--epochs", str(epochs), "--output_dir", str(out), "--seed", "7", "--device", "cpu",
        "--progress", "false", "--tensorboard_images", "0", *extra,
    ]


def _rows(run: Path) -> list[dict]:
    rows = json.loads((run / "metrics.json").read_text())["epochs"]
    for row in rows:
        row.pop("time_s")
    return rows


def _model(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("model", state)


@pytest.mark.parametrize("straight_extra, broken_extra", [
    ((), ()),
    # augmented; the interrupted run reads the image cache, the straight one decodes every epoch: the cache changes
    # nothing, and every item's augmentation depends on (seed, epoch, index) only
    (("--augment", "true"), ("--augment", "true", "--cache", "true")),
], ids=["plain", "augmented-cache-vs-uncached"])
def test_interrupted_then_resumed_run_equals_straight_run(tmp_path, monkeypatch, straight_extra, broken_extra):
    data = shared_data("radiography", "COVID-19_Radiography_Dataset")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert main(_args(data, straight, 2, *straight_extra)) == 0

    # interrupt the second run in the middle of epoch 2, after epoch 1's checkpoint is written (written in place
    # here, so the crash point does not depend on how fast the background writer is)
    monkeypatch.setattr(BackgroundWriter, "submit", lambda self, job, name="file": job())
    real = workflow.prepare_batch
    calls = {"after_checkpoint": 0}

    def failing(batch, *args, **kwargs):
        if (broken / "models" / "checkpoint_last.pt").is_file():
            calls["after_checkpoint"] += 1
            if calls["after_checkpoint"] == 2:
                raise RuntimeError("simulated crash in epoch 2")
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(workflow, "prepare_batch", failing)
    with pytest.raises(RuntimeError) as info:
        main(_args(data, broken, 2, *broken_extra))
    assert "simulated crash" in str(info.value.__cause__)  # MONAI wraps it in "Failed to evaluate"
    monkeypatch.setattr(workflow, "prepare_batch", real)
    monkeypatch.undo()

    summary = json.loads((broken / "summary.json").read_text())
    assert summary["status"] == "failed" and "simulated crash" in summary["error"]
    assert summary["resume_with"] == f"--resume {broken}"
    last = torch.load(broken / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert last["trainer"]["iteration"] == last["trainer"]["epoch_length"]  # epoch 1's checkpoint is intact
    assert [r["epoch"] for r in _rows(broken)] == [1]

    # resume: --resume RUN_DIR continues with the run's own resolved configs/train.yaml
    assert main(["run", "training", str(REPO / "bundles" / "random"), "--resume", str(broken)]) == 0
    final_a = _model(straight / "models" / "checkpoint_last.pt")
    final_b = _model(broken / "models" / "checkpoint_last.pt")
    assert final_a.keys() == final_b.keys()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a), "resumed weights differ from the straight run"
    best_a, best_b = _model(straight / "models" / "model.pt"), _model(broken / "models" / "model.pt")
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert _rows(straight) == _rows(broken)
    meta_a = json.loads((straight / "metrics.json").read_text())
    meta_b = json.loads((broken / "metrics.json").read_text())
    assert (meta_a["best_epoch"], meta_a["best_value"]) == (meta_b["best_epoch"], meta_b["best_value"])
    read = lambda p: list(csv.DictReader(p.open()))  # noqa: E731
    assert read(straight / "predictions.csv") == read(broken / "predictions.csv")
    assert json.loads((broken / "summary.json").read_text())["status"] == "finished"
    split_a = json.loads((straight / "split.json").read_text())
    split_b = json.loads((broken / "split.json").read_text())
    assert (split_a["train"], split_a["val"]) == (split_b["train"], split_b["val"])


def test_run_folder_is_never_overwritten(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = RunPaths.create(tmp_path / "run", "random")
    paths.models.mkdir()
    paths.last_checkpoint.write_bytes(b"x")
    with pytest.raises(RunDirError, match="already holds a run.*--resume"):
        RunPaths.create(tmp_path / "run", "random")
    with pytest.raises(RunDirError, match="nothing to resume"):
        RunPaths.create(None, "random", resume=str(tmp_path / "other"))
    with pytest.raises(RunDirError, match="needs the run folder"):
        RunPaths.create(None, "random", resume="true")
    resumed = RunPaths.create(tmp_path / "run", "random", resume=True)
    assert resumed.resuming and resumed.root == (tmp_path / "run").resolve()
    fresh = RunPaths.create(None, "imagenet", resume="false")
    assert fresh.root.parent.name == "runs" and fresh.root.name.startswith("imagenet-")
    fresh.root.rmdir()
