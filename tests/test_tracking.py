"""``--tracking mlflow``: runs, comparisons and their failures, read back from a real MLflow server.

The server (``mlflow_server``, tests/support/mlflow.py) is ``mlflow server`` on 127.0.0.1 with a SQLite
backend and artifacts in a temporary folder. Trainings are the real radiography sample at 32 px, 1-2 epochs.
Every logged metric is compared with the run folder's ``metrics.json``, epoch by epoch.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import os
import subprocess
import sys
import threading

import pytest
import torch
import torchvision.models as tvm

from cxrkit.cli import main
from cxrkit.tracking import RunTracker, TrackingError, check_tracking, metric_name, open_run
from support.mlflow import MLflowServer, require_mlflow
from support.paths import RADIOGRAPHY, REPO, shared_data
from support.weights import LAYOUTS, save

TINY = ["--image_size", "32", "--batch_size", "4", "--max_items", "16", "--device", "cpu",
        "--tensorboard_images", "0"]


class TrackingWarnings(logging.Handler):
    """The warnings of ``cxrkit.tracking``, caught on its own logger (a bundle's logging.conf resets the root's
    handlers, pytest's caplog among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> "TrackingWarnings":
        logging.getLogger("cxrkit.tracking").addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("cxrkit.tracking").removeHandler(self)


def assert_metrics_match_folder(client, run_id: str, run_dir) -> dict:
    """Every number of every metrics.json row is the run's metric history at that epoch; returns the run."""
    rows = json.loads((run_dir / "metrics.json").read_text())["epochs"]
    names = {k for row in rows for k, v in row.items() if k != "epoch" and isinstance(v, (int, float))}
    assert {"train_loss", "val_accuracy", "lr"} <= names
    for name in names:
        history = {m.step: m.value for m in client.get_metric_history(run_id, metric_name(name))}
        assert history == {row["epoch"]: pytest.approx(row[name], nan_ok=True) for row in rows if name in row}, name
    return client.get_run(run_id)


def artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    out = set()
    for item in client.list_artifacts(run_id, path):
        out |= artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return out


# ---- without a server ---------------------------------------------------------------------------------------
def test_without_mlflow_tracking_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed: `import mlflow` raises ImportError
    with pytest.raises(TrackingError, match=r'pip install "cxrkit\[tracking\]"'):
        check_tracking("mlflow")
    code = main(["run", "training", str(REPO / "bundles" / "random"), "--dataset_dir", str(tmp_path),
                 "--output_dir", str(tmp_path / "run"), "--tracking", "mlflow"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and 'cxrkit[tracking]' in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(TrackingError, match="unknown --tracking 'wandb'"):
        check_tracking("wandb")
    assert check_tracking("false") is None and check_tracking(None) is None


class _Failing(http.server.BaseHTTPRequestHandler):
    def _fail(self):
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"error_code": "INTERNAL_ERROR", "message": "database is locked"}')

    do_GET = do_POST = _fail

    def log_message(self, *args):
        pass


def test_a_server_answering_errors_costs_one_warning():
    require_mlflow()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with TrackingWarnings() as caught:
            run = open_run(f"http://127.0.0.1:{server.server_address[1]}", "x", "r", "the test")
            run.log_params({"a": 1})
            run.log_metrics({"m": 1.0}, step=1)
            run.close()
    finally:
        server.shutdown()
    assert run.broken and run.run_id is None
    warned = caught.messages
    assert len(warned) == 1 and "goes on without it" in warned[0] and "127.0.0.1" in warned[0]


# ---- a real server -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_monai_runner_tracks_a_training(mlflow_server, tmp_path):
    """``python -m monai.bundle run training ... --tracking mlflow``: MONAI's own runner, cxrkit's config."""
    data = shared_data(*RADIOGRAPHY)
    run_dir = tmp_path / "tracked"
    config = str(REPO / "bundles" / "random" / "configs" / "train.yaml")  # a self-contained bundle
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", config,
         "--meta_file", str(REPO / "bundles" / "random" / "configs" / "metadata.json"),
         "--bundle_root", str(REPO / "bundles" / "random"), "--dataset_dir", str(data), *TINY, "--epochs", "2",
         "--output_dir", str(run_dir), "--progress", "false", "--tracking", "mlflow",
         "--tracking_uri", mlflow_server.uri, "--experiment_name", "runner"],
        env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("runner")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.run_name == "tracked" and found.info.status == "FINISHED"
    run = assert_metrics_match_folder(client, found.info.run_id, run_dir)
    params = run.data.params
    assert params["plugin"] == "random" and params["seed"] == "0" and params["epochs"] == "2"
    assert params["split_sha256"] == hashlib.sha256((run_dir / "split.json").read_bytes()).hexdigest()
    assert params["weights.plugin"] == "random" and params["weights.pretrained"] == "False"
    assert params["versions.torch"] == torch.__version__ and params["max_epochs"] == "2"
    assert run.data.tags["cxrkit.run_folder"] == str(run_dir)
    test = json.loads((run_dir / "test" / "metrics.json").read_text())["metrics"]
    metrics = run.data.metrics
    assert metrics["test_accuracy"] == pytest.approx(test["accuracy"])
    assert metrics["test_accuracy_ci_low"] <= metrics["test_accuracy"] <= metrics["test_accuracy_ci_high"]
    logged = artifacts(client, found.info.run_id)
    assert {"models/model.pt", "report/report.md", "report/report.html", "configs/train.yaml", "metrics.json",
            "weights.json", "versions.json", "test/metrics.json"} <= logged
    assert not any("predictions" in p or p.endswith("split.json") for p in logged)  # image names stay local
    assert not (run_dir.parent / "mlruns.db").exists()  # the server got it all


def write_inat_supervised(folder):
    """An ``inat2021_supervised`` checkpoint in its real layout, with a seeded random ResNet50 in it."""
    torch.manual_seed(1)
    state = {k: v for k, v in tvm.resnet50(weights=None).state_dict().items() if not k.startswith("fc.")}
    layout = LAYOUTS["inat2021_supervised"]
    return save(layout.build(state), folder / "inat2021_supervised" / layout.filename)


@pytest.mark.slow
def test_compare_is_a_parent_run_with_one_child_per_source(mlflow_server, isolated, drop_checkpoints, capsys):
    from cxrkit.cli import compare_cmd

    import argparse

    data = shared_data(*RADIOGRAPHY)
    write_inat_supervised(isolated / "w")
    out = isolated / "cmp"
    parser = argparse.ArgumentParser(prog="cxrkit")
    compare_cmd.add_parser(parser.add_subparsers(dest="command"))
    args, extra = parser.parse_known_args([
        "compare", "--dataset_dir", str(data), "--plugins", "random,inat_swav,inat2021_supervised",
        "--weights_dir", str(isolated / "w"), "--epochs", "1", "--image_size", "32", "--batch_size", "4",
        "--max_items", "12", "--output_dir", str(out), "--device", "cpu", "--bootstrap", "50", "--no_progress",
        "--tracking", "mlflow", "--tracking_uri", mlflow_server.uri, "--experiment_name", "study"])
    args.overrides = extra
    assert args.func(args) == 0

    client = mlflow_server.client()
    experiment = client.get_experiment_by_name("study")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert parent.info.run_name == "cmp" and parent.info.status == "FINISHED"
    assert parent.data.params["plugins"] == "random,inat_swav,inat2021_supervised"
    assert {"comparison.md", "compare.json"} <= artifacts(client, parent.info.run_id)
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == {"random", "inat_swav", "inat2021_supervised"} and len(runs) == 4
    for name, child in children.items():
        run_dir = out / "runs" / name
        assert child.info.status == "FINISHED" and child.data.params["plugin"] == name
        assert child.data.params["split_manifest"] == str(out / "split.json")
        assert_metrics_match_folder(client, child.info.run_id, run_dir)
        weights = json.loads((run_dir / "weights.json").read_text())
        assert child.data.params["weights.sha256"] == str(weights["sha256"])
        assert child.data.params.get("weights.verification") == weights.get("verification")
    assert children["inat_swav"].data.params["weights.verification"] == "unverifiable"

    # an external evaluation of one source: a run nested under that source's training run
    code = main(["external", str(out / "runs" / "random"), "--dataset", "radiography", "--dataset_dir", str(data),
                 "--max_items", "8", "--device", "cpu", "--bootstrap", "50", "--no_progress", "--tracking", "mlflow",
                 "--tracking_uri", mlflow_server.uri, "--experiment_name", "study"])
    assert code == 0
    (evaluation,) = [r for r in client.search_runs([experiment.experiment_id])
                     if r.info.run_name == "random-external-radiography"]
    assert evaluation.data.tags["mlflow.parentRunId"] == children["random"].info.run_id
    written = json.loads((out / "runs" / "random" / "external" / "radiography" / "metrics.json").read_text())
    assert evaluation.data.metrics["external_accuracy"] == pytest.approx(written["metrics"]["accuracy"])
    assert "external_accuracy_ci_low" in evaluation.data.metrics and evaluation.data.params["dataset"] == "radiography"
    assert artifacts(client, evaluation.info.run_id) == {"external/radiography/metrics.json"}


@pytest.mark.slow
def test_a_server_killed_mid_run_leaves_a_complete_run_folder_and_one_warning(tmp_path, monkeypatch):
    require_mlflow()
    data = shared_data(*RADIOGRAPHY)
    server = MLflowServer(tmp_path / "server").start()
    logged_epochs = []
    original = RunTracker.__call__

    def log_then_kill(self, engine):  # the server goes down once epoch 1 reached it
        original(self, engine)
        logged_epochs.append(engine.state.epoch)
        if engine.state.epoch == 1:
            server.kill()

    monkeypatch.setattr(RunTracker, "__call__", log_then_kill)
    run_dir = tmp_path / "run"
    try:
        with TrackingWarnings() as caught:
            code = main(["run", "training", str(REPO / "bundles" / "random"), "--dataset_dir", str(data), *TINY,
                         "--epochs", "2", "--output_dir", str(run_dir), "--no_progress", "--tracking", "mlflow",
                         "--tracking_uri", server.uri])
    finally:
        server.stop()
    assert code == 0 and logged_epochs == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 2
    assert [r["epoch"] for r in json.loads((run_dir / "metrics.json").read_text())["epochs"]] == [1, 2]
    for name in ("models/model.pt", "test/metrics.json", "test/predictions.csv", "configs/train.yaml"):
        assert (run_dir / name).is_file(), name
    warned = caught.messages
    assert len(warned) == 1 and server.uri in warned[0] and str(run_dir) in warned[0], warned
