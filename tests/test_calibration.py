"""Calibration: ECE, reliability bins, temperature scaling fitted on validation, applied at inference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrkit.calibration import (
    Calibration,
    CalibrationError,
    TemperatureScaled,
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    read_calibration,
    reliability_bins,
)


def _overconfident(n: int, seed: int, sharpen: float = 4.0):
    """Labels drawn from calibrated probabilities, reported by a model whose logits are ``sharpen`` times too big."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.2, (n, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in true_p])
    shown = np.exp(sharpen * logits)
    return y, shown / shown.sum(1, keepdims=True)


def test_ece_of_known_cases():
    y = np.array([0, 0, 1, 1])
    perfect = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert expected_calibration_error(y, perfect) == pytest.approx(0.0)
    # always 90% sure, right half of the time: a gap of 0.4
    sure = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    assert expected_calibration_error(y, sure) == pytest.approx(0.4)
    bins = reliability_bins(y, sure, bins=10)
    assert bins["count"].sum() == 4 and bins["count"][8] == 4  # 0.9 falls in (0.8, 0.9]
    assert bins["accuracy"][8] == pytest.approx(0.5) and np.isnan(bins["accuracy"][0])


def test_temperature_scaling_lowers_the_ece_of_an_overconfident_model():
    y_val, p_val = _overconfident(600, seed=0)
    y_test, p_test = _overconfident(600, seed=1)
    t = fit_temperature(y_val, p_val)
    assert 3.0 < t < 5.5  # the logits were 4x too large
    before, after = expected_calibration_error(y_test, p_test), expected_calibration_error(y_test, apply_temperature(p_test, t))
    assert before > 0.15 and after < before / 3
    assert (apply_temperature(p_test, t).argmax(1) == p_test.argmax(1)).all()  # no prediction changes
    calibration = Calibration.fit(y_val, p_val)
    assert calibration.ece_after < calibration.ece_before and calibration.nll_after < calibration.nll_before
    assert "T = " in calibration.describe() and "validation" in calibration.describe()


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    y, p = _overconfident(200, seed=2)
    calibration = Calibration.fit(y, p)
    calibration.save(tmp_path / "calibration.json")
    assert read_calibration(tmp_path) == calibration
    assert read_calibration(tmp_path / "elsewhere") is None
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": -1, "fitted_on": "validation"}))
    with pytest.raises(CalibrationError, match="calibration.json"):
        read_calibration(tmp_path)
    with pytest.raises(CalibrationError, match="2\\+ labelled images"):
        fit_temperature([0], [[0.5, 0.5]])


def test_temperature_transform_follows_the_file(tmp_path):
    file = tmp_path / "calibration.json"
    transform = TemperatureScaled("pred", file)
    logits = torch.tensor([2.0, -2.0])
    assert torch.equal(transform({"pred": logits})["pred"], logits)  # no file: unchanged
    Calibration(2.0, "validation", 10, 0.5, 0.4, 0.2, 0.05).save(file)
    assert torch.allclose(transform({"pred": logits})["pred"], logits / 2)
    assert transform.calibration.temperature == 2.0
