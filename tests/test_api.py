"""The public API (``cxrkit.api``) is the library the CLI is a layer over: the same objects, usable directly."""

from __future__ import annotations

import csv
import json

import pytest
from support.paths import RADIOGRAPHY, shared_data

import cxrkit.api as api
from cxrkit.bundle import runner
from cxrkit.report import runfolder as report_runfolder
from cxrkit.runfolder import RunPaths
from cxrkit.serve import predict as serve_predict


def test_api_names_are_the_owning_modules_objects():
    assert api.run_bundle is runner.run_bundle and api.user_error is runner.user_error
    assert api.Predictor is serve_predict.Predictor and api.RunPaths is RunPaths
    assert api.read_run is report_runfolder.load_run
    assert all(hasattr(api, name) for name in api.__all__)


def test_infer_and_read_run_on_a_trained_run(tiny_run, tmp_path):
    images = sorted(shared_data(*RADIOGRAPHY, "COVID").glob("*.png"))[:2]
    out = api.infer(tiny_run, images[0].parent, output_file=str(tmp_path / "p.csv"), device="cpu")
    assert out == tmp_path / "p.csv"
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["pred_class"] for r in rows} <= {"COVID", "Normal"} and len(rows) >= 2
    run = api.read_run(tiny_run)
    paths = RunPaths.of(tiny_run)
    assert run.classes == ["COVID", "Normal"] and paths.is_servable()
    assert run.best_epoch == json.loads(paths.metrics_json.read_text())["best_epoch"]
    assert paths.inference_config.name == "inference.yaml" and paths.trained_model == paths.model


def test_user_error_finds_the_mistake_inside_monai_wrappers(tiny_run):
    with pytest.raises(Exception) as info:
        api.run_bundle("evaluate", tiny_run, {"dataset_dir": "/no/such/folder", "device": "cpu"})
    cause = api.user_error(info.value)
    assert cause is not None and "/no/such/folder" in str(cause)
