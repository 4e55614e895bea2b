"""Report metrics equal scikit-learn's (``zero_division=np.nan``: undefined is nan, left out of averages); the
bootstrap is exact per resample, seeded, fast and sensible."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    roc_auc_score,
)

from cxrkit.report.bootstrap import bootstrap_intervals, resample_values
from cxrkit.report.metrics import compute_metrics, headline, headline_labels, roc_points


def probs_from_preds(y_pred: list[int], n_classes: int, confidence: float = 0.8) -> np.ndarray:
    """Probabilities whose argmax is ``y_pred``."""
    p = np.full((len(y_pred), n_classes), (1 - confidence) / (n_classes - 1))
    p[np.arange(len(y_pred)), y_pred] = confidence
    return p


def random_case(n: int, n_classes: int, skill: float, seed: int, round_to: int | None = None):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += skill
    if round_to is not None:
        logits = np.round(logits, round_to)  # ties in the scores
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def assert_matches_sklearn(y_true, y_prob, y_pred=None):
    y_true, y_prob = np.asarray(y_true), np.asarray(y_prob)
    y_pred = y_prob.argmax(1) if y_pred is None else np.asarray(y_pred)
    n = y_prob.shape[1]
    labels = list(range(n))
    m = compute_metrics(y_true, y_prob, y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=np.nan)
    np.testing.assert_allclose(m.precision, p)  # nan where sklearn's is nan
    np.testing.assert_allclose(m.sensitivity, r)
    np.testing.assert_allclose(m.f1, f)
    np.testing.assert_array_equal(m.support, s)
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=avg,
                                                        zero_division=np.nan)
        assert getattr(m, avg) == pytest.approx({"precision": ap, "sensitivity": ar, "f1": af}, nan_ok=True)
    assert m.accuracy == pytest.approx(accuracy_score(y_true, y_pred))
    np.testing.assert_array_equal(m.confusion, confusion_matrix(y_true, y_pred, labels=labels))
    for k in labels:  # specificity = recall of "not k"
        expected = recall_score(y_true != k, y_pred != k, zero_division=np.nan)
        assert m.specificity[k] == pytest.approx(expected, nan_ok=True)
        if 0 < (y_true == k).sum() < len(y_true):
            assert m.auc[k] == pytest.approx(roc_auc_score(y_true == k, y_prob[:, k]))
        else:
            assert math.isnan(m.auc[k])
    return m


def test_binary_matches_sklearn_and_positive_class_zero():
    y = [0, 0, 0, 1, 1, 1, 1, 0]
    p0 = np.array([0.9, 0.8, 0.4, 0.3, 0.2, 0.6, 0.1, 0.7])
    prob = np.c_[p0, 1 - p0]
    m = assert_matches_sklearn(y, prob)
    point = headline(m.values, ["COVID", "Normal"], 0, row=0)
    assert point["auc"] == pytest.approx(roc_auc_score(np.array(y) == 0, p0))
    assert point["sensitivity/COVID"] == pytest.approx(3 / 4)  # TP 3 of 4 COVID
    assert point["specificity/COVID"] == pytest.approx(3 / 4)  # 1 Normal called COVID


def test_multiclass_macro_auc_equals_sklearn_ovr():
    y, p = random_case(300, 3, 1.0, seed=4)
    m = assert_matches_sklearn(y, p)
    assert m.macro_auc == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    labels = headline_labels(["COVID", "Normal", "Viral Pneumonia"], None)
    assert list(labels)[-1] == "auc" and "sensitivity/Viral Pneumonia" in labels


def test_empty_class_zero_support_and_never_predicted():
    y_true = [0, 0, 1, 1, 1, 0]
    y_pred = [0, 1, 1, 1, 0, 0]  # class 2: no support, never predicted
    m = assert_matches_sklearn(y_true, probs_from_preds(y_pred, 3))
    assert m.support[2] == 0 and math.isnan(m.precision[2]) and math.isnan(m.sensitivity[2])
    assert math.isnan(m.auc[2]) and m.macro_auc == pytest.approx(np.mean(m.auc[:2]))  # over the defined classes


def test_class_with_support_but_never_predicted():
    y_true = [0, 1, 2, 2, 1, 0, 2]
    y_pred = [0, 1, 1, 1, 1, 0, 0]  # class 2 never predicted
    m = assert_matches_sklearn(y_true, probs_from_preds(y_pred, 3))
    assert math.isnan(m.precision[2]) and m.sensitivity[2] == 0 and m.specificity[2] == 1


def test_perfect_and_all_wrong():
    y = np.array([0, 1, 0, 1, 1])
    perfect = assert_matches_sklearn(y, probs_from_preds(list(y), 2, 0.9))
    assert perfect.accuracy == 1 and perfect.macro["f1"] == 1 and (perfect.auc == 1).all()
    wrong = assert_matches_sklearn(y, probs_from_preds(list(1 - y), 2, 0.9))
    assert wrong.accuracy == 0 and wrong.macro["f1"] == 0 and (wrong.auc == 0).all()
    assert (wrong.specificity == 0).all()


def test_single_class_y_true_gives_nan_auc_not_a_crash():
    y = np.zeros(6, dtype=int)
    m = assert_matches_sklearn(y, probs_from_preds([0, 0, 1, 0, 0, 1], 2))
    assert np.isnan(m.auc).all() and roc_points(y, probs_from_preds([0] * 6, 2), 0) is None
    point = headline(m.values, ["COVID", "Normal"], 0, row=0)
    assert math.isnan(point["auc"])


def test_recorded_pred_column_is_used():
    prob = probs_from_preds([0, 1, 1, 0], 2)
    m = compute_metrics([0, 1, 1, 0], prob, y_pred=[1, 1, 1, 1])
    assert m.accuracy == 0.5


@pytest.mark.parametrize(
    "y_true, y_prob, message",
    [
        ([0, 1], np.ones((2, 1)), "n_classes >= 2"),
        ([0, 1, 1], np.full((2, 2), 0.5), "y_true must have shape"),
        ([0, 3], np.full((2, 2), 0.5), "outside 0..1"),
    ],
)
def test_bad_inputs(y_true, y_prob, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y_true, y_prob)


# --------------------------------------------------------------------------- bootstrap


@pytest.mark.parametrize("n_classes, round_to", [(2, 1), (3, None), (4, 0)])
def test_each_resample_equals_sklearn(n_classes, round_to):
    y, p = random_case(150, n_classes, 1.0, seed=n_classes, round_to=round_to)
    pred = p.argmax(1)
    index = np.random.default_rng(0).integers(0, len(y), size=(6, len(y)))
    values = resample_values(y, pred, p, index)
    for b in range(index.shape[0]):
        expected = compute_metrics(y[index[b]], p[index[b]]).values
        for key, value in expected.items():
            np.testing.assert_allclose(values[key][b], value[0], atol=1e-12, err_msg=key)


def test_interval_contains_point_is_reproducible_and_seeded():
    y, p = random_case(400, 2, 2.0, seed=1)
    point = headline(compute_metrics(y, p).values, ["COVID", "Normal"], 0, row=0)
    a = bootstrap_intervals(y, p, classes=["COVID", "Normal"], positive=0, n_resamples=500, seed=7)
    b = bootstrap_intervals(y, p, classes=["COVID", "Normal"], positive=0, n_resamples=500, seed=7)
    c = bootstrap_intervals(y, p, classes=["COVID", "Normal"], positive=0, n_resamples=500, seed=8)
    assert a == b and a != c
    assert set(a) == set(point)
    for key, ci in a.items():
        assert ci.low < ci.high and ci.contains(point[key]), key
        assert ci.n_skipped == 0 and ci.n_resamples == 500


def test_interval_narrows_with_more_data():
    widths = []
    for n in (100, 2500):
        y, p = random_case(n, 2, 1.5, seed=3)
        ci = bootstrap_intervals(y, p, classes=["a", "b"], positive=0, n_resamples=400, seed=0)
        widths.append({k: v.high - v.low for k, v in ci.items()})
    for key in widths[0]:
        assert widths[1][key] < widths[0][key] / 2.5, key  # ~ 1/sqrt(25) = 1/5


def test_resamples_missing_a_class_are_skipped_and_counted():
    y = np.array([0] * 18 + [1, 2])  # classes 1 and 2 have one image each
    p = probs_from_preds([0] * 17 + [1, 1, 2], 3)
    classes = ["COVID", "Normal", "Viral Pneumonia"]
    ci = bootstrap_intervals(y, p, classes=classes, positive=None, n_resamples=300, seed=5, block=100)
    rng = np.random.default_rng(5)  # the same draws, counted independently
    index = np.concatenate([rng.integers(0, 20, size=(100, 20)) for _ in range(3)])
    missing = sum(2 not in y[row] for row in index)  # Viral Pneumonia not drawn: no sensitivity
    single = sum(len(set(y[row])) < 2 for row in index)  # one class drawn: no AUC at all
    assert missing > 0 and ci["sensitivity/Viral Pneumonia"].n_skipped == missing
    assert ci["auc"].n_skipped == single < missing  # the macro AUC averages the classes where it is defined
    assert ci["accuracy"].n_skipped == 0


def test_all_resamples_undefined_gives_nan_interval():
    y = np.zeros(10, dtype=int)
    ci = bootstrap_intervals(y, probs_from_preds([0] * 10, 2), classes=["a", "b"], positive=0, n_resamples=50)
    assert math.isnan(ci["auc"].low) and ci["auc"].n_skipped == 50 and not ci["auc"].contains(0.5)


def test_bootstrap_of_a_large_case_is_complete_and_reproducible():
    """3000 images, 3 classes, 1000 resamples: every interval is drawn in full and brackets the point
    estimate; the same seed gives the same intervals. (How fast this runs is a benchmark question: no
    test asserts a duration.)"""
    y, p = random_case(3000, 3, 1.0, seed=2, round_to=2)
    ci = bootstrap_intervals(y, p, classes=["a", "b", "c"], positive=None, n_resamples=1000, seed=0)
    point = headline(compute_metrics(y, p).values, ["a", "b", "c"], None, row=0)
    assert set(ci) == set(point) and "auc" in ci
    for key, interval in ci.items():
        assert interval.n_resamples == 1000 and interval.n_skipped == 0, key
        assert interval.contains(point[key]), key
    again = bootstrap_intervals(y, p, classes=["a", "b", "c"], positive=None, n_resamples=1000, seed=0)
    assert {k: (v.low, v.high) for k, v in again.items()} == {k: (v.low, v.high) for k, v in ci.items()}


def test_bootstrap_argument_errors():
    y, p = random_case(10, 2, 1.0, seed=0)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_intervals(y, p, classes=["a", "b"], positive=0, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_intervals(y, p, classes=["a", "b"], positive=0, confidence=95)
