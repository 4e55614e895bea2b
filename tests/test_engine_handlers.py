"""Handlers: best-model checkpoint, early stopping, epoch-seeded data order, RNG state, atomic writes."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from cxrkit.engine.handlers import BestModelCheckpoint, ValidationEarlyStopping
from cxrkit.engine.metrics import metric_score
from cxrkit.atomic import atomic_write_json
from cxrkit.engine.resume import EpochSeededSampler, RNGState
from cxrkit.networks.classifier import CXRClassifier


def _evaluator(values: list[float], name: str = "val_accuracy") -> Engine:
    """An engine whose epoch e reports ``values[e-1]`` as ``name``."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.EPOCH_COMPLETED)
    def _set(e):
        e.state.metrics[name] = values[e.state.epoch - 1]

    return engine


def test_best_model_checkpoint_keeps_the_first_best_and_survives_a_failed_save(tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    evaluator = _evaluator([0.5, 0.7, 0.7, math.nan, 0.6])
    best = BestModelCheckpoint(tmp_path, net, "val_accuracy")
    seen = []

    @evaluator.on(Events.EPOCH_STARTED)
    def _change(e):
        with torch.no_grad():
            net.weight.fill_(float(e.state.epoch))

    best.attach(evaluator)
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.append(best.best_epoch))
    evaluator.run([0], max_epochs=5)
    assert seen == [1, 2, 2, 2, 2] and best.best_value == 0.7
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert torch.all(saved["weight"] == 2.0), "model.pt must be the epoch-2 model (first to reach the best value)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary files left
    restored = BestModelCheckpoint(tmp_path, net, "val_accuracy")
    restored.load_state_dict(best.state_dict())
    assert (restored.best_epoch, restored.best_value) == (2, 0.7)
    # a crash while saving a new best leaves the previous model.pt intact
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    engine = _evaluator([0.9])
    engine.state.epoch = 0
    restored.attach(engine)
    with pytest.raises(OSError, match="disk full"):
        engine.run([0], max_epochs=1)
    assert torch.all(torch.load(tmp_path / "model.pt", weights_only=True)["weight"] == 2.0)


def test_loss_is_minimised_and_nan_never_wins():
    assert metric_score("val_loss", 0.2) > metric_score("val_loss", 0.3)
    assert metric_score("val_f1/COVID", 0.9) > metric_score("val_f1/COVID", 0.8)
    assert metric_score("val_auc", math.nan) == -math.inf


def test_early_stopping_stops_after_patience_and_resumes_its_counter():
    values = [0.5, 0.6, 0.6, 0.55, 0.9]
    evaluator = _evaluator(values)
    trainer = Engine(lambda e, b: None)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: evaluator.run([0], max_epochs=e.state.epoch))
    stopper = ValidationEarlyStopping(evaluator, "val_accuracy", patience=2)
    stopper.attach(trainer)
    trainer.run([0], max_epochs=5)
    assert trainer.state.epoch == 4  # epochs 3 and 4 did not improve on 0.6
    state = stopper.state_dict()
    assert state["counter"] == 2 and state["best_score"] == pytest.approx(0.6)
    fresh = ValidationEarlyStopping(evaluator, "val_accuracy", patience=2)
    fresh.load_state_dict(state)  # before attach (as when resuming)
    fresh.attach(Engine(lambda e, b: None))
    assert fresh.state_dict()["counter"] == 2
    off = ValidationEarlyStopping(evaluator, patience="null")
    assert off.patience is None and off.state_dict() == {}
    with pytest.raises(ValueError, match=">= 0"):
        ValidationEarlyStopping(evaluator, patience=-1)


def test_data_order_depends_only_on_seed_and_epoch():
    data = list(range(20))
    a, b = EpochSeededSampler(data, seed=3), EpochSeededSampler(data, seed=3)
    a.set_epoch(2)
    first = list(a)
    b.set_epoch(1)
    list(b)
    b.set_epoch(2)
    assert list(b) == first and sorted(first) == data
    a.set_epoch(3)
    assert list(a) != first
    assert list(EpochSeededSampler(data, shuffle=False)) == data


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = RNGState().state_dict()
    torch.save({"rng": state}, tmp_path / "c.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    RNGState().load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_atomic_json_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"epochs": [1]})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object.__new__(type("X", (), {"__repr__": None}))})
    assert json.loads(path.read_text()) == {"epochs": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_classifier_loads_a_plugins_weight_file_and_records_its_sha256(tmp_path):
    import hashlib

    import torchvision

    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50-0676ba61.pth"
    torch.save(reference.state_dict(), path)  # torchvision's layout: a flat state dict with fc.*
    from cxrkit.weights import WeightHashWarning

    with pytest.warns(WeightHashWarning, match="hash mismatch"):  # not the published file, as expected
        net = CXRClassifier("imagenet", 2, weights_path=str(path))
    assert net.weights_info["pretrained"] is True
    assert net.weights_info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(net.backbone.conv1.weight, reference.conv1.weight)
