"""One definition per metric: training's Ignite metrics, the report and the bootstrap give the same numbers.

The online path is the evaluator of the training config (MONAI's ``SupervisedEvaluator`` with
``shard_safe_metrics(classification_metrics(...))`` attached as the key and additional metrics); the
offline path is the report's :func:`cxrkit.report.metrics.compute_metrics` on the probabilities the
predictions file holds. Both must be equal on random and degenerate inputs, and equal scikit-learn's
(``zero_division=np.nan``) wherever scikit-learn defines the value.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from sklearn.metrics import (accuracy_score, confusion_matrix, precision_recall_fscore_support, recall_score,
                             roc_auc_score)

from cxrkit.engine.distributed import shard_safe_metrics
from cxrkit.engine.loaders import prepare_batch
from cxrkit.engine.metrics import classification_metrics, pick_metrics
from cxrkit.metrics import METRICS, evaluate, metric, record, record_keys
from cxrkit.report.bootstrap import resample_values
from cxrkit.report.metrics import compute_metrics, headline
from cxrkit.report.report import evaluate_run
from cxrkit.report.runfolder import load_run
from support.paths import REPO
from support.runfolders import md_tables


def run_evaluator(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], positive: int | None,
                  batch_size: int = 3) -> dict:
    """The online path: the metrics of the training config, attached to MONAI's evaluator."""
    found = shard_safe_metrics(classification_metrics(classes, prefix="val_", positive_index=positive,
                                                      loss_function=torch.nn.CrossEntropyLoss()))
    loader = [{"image": logits[i:i + batch_size], "label": labels[i:i + batch_size]}
              for i in range(0, len(labels), batch_size)]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=loader, network=torch.nn.Identity(), prepare_batch=prepare_batch,
        key_val_metric=pick_metrics(found, "val_accuracy", True),
        additional_metrics=pick_metrics(found, "val_accuracy", False), decollate=False)  # as validate.yaml attaches
    evaluator.run()
    return dict(evaluator.state.metrics)


def offline(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], positive: int | None):
    """The offline path: the probabilities as the predictions file stores them (float32 softmax)."""
    probs = torch.softmax(logits.float(), dim=1).double().numpy()
    return compute_metrics(labels.numpy(), probs, classes=classes), probs


def assert_same(online: dict, offline_record: dict, confusion: np.ndarray) -> None:
    for key, value in offline_record.items():
        got = online[f"val_{key}"]
        assert isinstance(got, float), key
        assert got == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), key
    assert online["val_confusion_matrix"].tolist() == confusion.tolist()


def assert_sklearn(m, y: np.ndarray, probs: np.ndarray, positive: int | None) -> None:
    """Every value against scikit-learn where scikit-learn defines it (``nan`` where it says undefined)."""
    pred, labels = probs.argmax(1), list(range(probs.shape[1]))
    found = m.record(positive)
    assert found["accuracy"] == pytest.approx(accuracy_score(y, pred))
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=np.nan)
    for k, c in enumerate(m.classes):
        assert [found[f"precision/{c}"], found[f"sensitivity/{c}"], found[f"f1/{c}"]] == pytest.approx(
            [p[k], r[k], f[k]], nan_ok=True), c
        specificity = recall_score(y != k, pred != k, zero_division=np.nan)
        assert found[f"specificity/{c}"] == pytest.approx(specificity, nan_ok=True), c
        if 0 < (y == k).sum() < len(y):
            assert found[f"auc/{c}"] == pytest.approx(roc_auc_score(y == k, probs[:, k]))
        else:  # scikit-learn raises or warns: undefined
            assert math.isnan(found[f"auc/{c}"])
    for avg in ("macro", "weighted"):
        ap, ar, af, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=np.nan)
        assert [found[f"{avg}_precision"], found[f"{avg}_sensitivity"], found[f"{avg}_f1"]] == pytest.approx(
            [ap, ar, af], nan_ok=True), avg
    if len(set(y.tolist())) == probs.shape[1] > 2:
        assert found["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    if positive is not None and 0 < (y == positive).sum() < len(y):
        assert found["auc"] == pytest.approx(roc_auc_score(y == positive, probs[:, positive]))
    np.testing.assert_array_equal(m.confusion, confusion_matrix(y, pred, labels=labels))


def random_case(seed: int, n: int, n_classes: int, skill: float = 1.0, decimals: int | None = None):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    logits = torch.randn(n, n_classes, generator=g)
    logits[torch.arange(n), labels] += skill
    if decimals is not None:
        logits = torch.round(logits, decimals=decimals)
    return logits, labels


def degenerate_cases():
    two, three = ["COVID", "Normal"], ["COVID", "Normal", "Viral Pneumonia"]
    logits, labels = random_case(1, 30, 3)
    absent = labels.clone()
    absent[absent == 2] = 0  # a class absent from the labels (still predicted)
    yield "class absent", logits, absent, three, None
    yield "one class predicted", torch.tensor([[3.0, 0.0, 0.5]]).repeat(9, 1) + 0.1 * torch.randn(9, 3), \
        torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2]), three, None
    tied_logits, tied_labels = random_case(2, 40, 2, skill=0.5, decimals=0)  # many tied scores
    yield "tied scores", tied_logits, tied_labels, two, 0
    yield "tie within a row", torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, 3.0]]), \
        torch.tensor([1, 0, 0, 1]), two, 1  # argmax of a tie: the first class, on both paths
    yield "single sample", torch.tensor([[0.2, 1.5, -0.3]]), torch.tensor([1]), three, None
    yield "single class in labels", torch.randn(6, 2), torch.zeros(6, dtype=torch.long), two, 0
    yield "all wrong", torch.tensor([[0.0, 4.0], [4.0, 0.0], [0.0, 4.0]]), torch.tensor([0, 1, 0]), two, 0
    yield "absent and never predicted", torch.tensor([[2.0, 0.0, -1.0], [0.0, 2.0, -1.0], [2.0, 1.0, -1.0]]), \
        torch.tensor([0, 1, 1]), three, 2


@pytest.mark.parametrize("seed, n, n_classes, positive, decimals", [
    (0, 50, 2, 0, None), (1, 37, 3, None, None), (2, 64, 4, None, 1), (3, 20, 3, 1, None), (4, 45, 2, 1, 0)])
def test_online_equals_offline_equals_sklearn_on_random_inputs(seed, n, n_classes, positive, decimals):
    classes = ["COVID", "Normal", "Viral Pneumonia", "Lung Opacity"][:n_classes]
    logits, labels = random_case(seed, n, n_classes, decimals=decimals)
    m, probs = offline(logits, labels, classes, positive)
    online = run_evaluator(logits, labels, classes, positive, batch_size=7)
    assert set(online) == {f"val_{k}" for k in record_keys(classes)} | {"val_loss", "val_confusion_matrix"}
    assert_same(online, m.record(positive), m.confusion)
    assert_sklearn(m, labels.numpy(), probs, positive)


@pytest.mark.parametrize("case", list(degenerate_cases()), ids=lambda c: c[0])
def test_online_equals_offline_on_degenerate_inputs(case):
    _, logits, labels, classes, positive = case
    m, probs = offline(logits, labels, classes, positive)
    online = run_evaluator(logits, labels, classes, positive, batch_size=2)
    assert_same(online, m.record(positive), m.confusion)
    assert_sklearn(m, labels.numpy(), probs, positive)


def test_the_degenerate_rule():
    """Undefined is nan; averages are over the classes where a value is defined; ties count one half."""
    three = ["a", "b", "c"]
    absent = record(evaluate([0, 1, 1, 0], np.array([[.6, .3, .1], [.2, .7, .1], [.5, .4, .1], [.4, .5, .1]])),
                    three, None)
    assert math.isnan(absent["sensitivity/c"]) and math.isnan(absent["auc/c"]) and math.isnan(absent["f1/c"])
    assert absent["macro_sensitivity"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # not (1/2 + 1/2 + 0) / 3
    assert absent["macro_auc"] == pytest.approx(np.mean([absent["auc/a"], absent["auc/b"]]))
    single = record(evaluate([1], np.array([[0.1, 0.9]])), ["a", "b"], 1)
    assert single["accuracy"] == 1 and math.isnan(single["auc"]) and math.isnan(single["specificity/b"])
    assert math.isnan(single["precision/a"]) and single["specificity/a"] == 1
    ties = record(evaluate([0, 1, 0, 1], np.full((4, 2), 0.5)), ["a", "b"], 1)
    assert ties["auc"] == 0.5 and ties["accuracy"] == 0.5 and math.isnan(ties["precision/b"])  # argmax: class a
    empty = metric("accuracy", [0, 1], np.eye(2), weights=np.array([[1, 1], [0, 0]]))
    assert empty[0] == 1 and math.isnan(empty[1])  # no images: undefined


def test_weighted_sets_equal_repeated_images_and_the_bootstrap_reuses_it():
    logits, labels = random_case(5, 25, 3, decimals=1)
    probs = torch.softmax(logits, 1).double().numpy()
    y = labels.numpy()
    index = np.random.default_rng(0).integers(0, 25, size=(4, 25))
    batched = resample_values(y, probs.argmax(1), probs, index)
    for b in range(4):
        one = evaluate(y[index[b]], probs[index[b]])
        for key, value in one.items():
            np.testing.assert_allclose(batched[key][b], value[0], rtol=1e-12, err_msg=key)


def test_the_table_is_the_record_and_the_docs():
    """Each metric is one entry of METRICS; its name is documented in docs/reports.md."""
    docs = (REPO / "docs" / "reports.md").read_text()
    keys = record_keys(["a", "b"])
    for spec in METRICS:
        assert f"`{spec.name}`" in docs, spec.name
        assert (f"{spec.name}/a" in keys) == spec.per_class and all(f"{h}_{spec.name}" in keys for h in spec.averages)
    assert "recall" not in " ".join(keys)  # one name: sensitivity


# ---- a trained run: metrics.json, the report and the bootstrap agree ----------------------------------------------

def test_a_runs_metrics_json_report_and_bootstrap_agree(tiny_run, tmp_path):
    from cxrkit.report.report import write_report

    run = load_run(tiny_run)
    recorded = json.loads((tiny_run / "metrics.json").read_text())
    best = next(row for row in recorded["epochs"] if row["epoch"] == recorded["best_epoch"])
    checked = 0
    splits = [("validation", {k[4:]: v for k, v in best.items() if k.startswith("val_")})]
    if (tiny_run / "test" / "metrics.json").is_file():
        splits.append(("test", json.loads((tiny_run / "test" / "metrics.json").read_text())["metrics"]))
    for split, online in splits:
        ev = evaluate_run(run, bootstrap=0, split=split)
        report_values = ev.metrics.record(ev.positive)
        preds = ev.predictions
        n = len(preds.y_true)
        boot = headline(resample_values(preds.y_true, preds.y_pred, preds.y_prob, np.arange(n)[None, :]),
                        run.classes, ev.positive, row=0)  # the bootstrap's computation on the drawn-once set
        for key, value in report_values.items():
            assert online[key] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), (split, key)
            checked += 1
        for key, value in boot.items():
            assert value == pytest.approx(report_values[key], nan_ok=True), (split, key)
            assert ev.point[key] == pytest.approx(report_values[key], nan_ok=True), (split, key)
        assert online["confusion_matrix"] == ev.metrics.confusion.tolist()
    assert checked >= 2 * len(run.classes) * 5

    # the numbers the report prints (4 decimals) are metrics.json's
    md = write_report(tiny_run, tmp_path / "report", bootstrap=50).read_text()
    headline_rows = next(rows for title, rows in md_tables(md).items() if title.startswith("Headline metrics"))[0]
    ev = evaluate_run(run, bootstrap=0)
    source = splits[-1][1] if ev.split == splits[-1][0] else splits[0][1]
    for (label, value, _), key in zip(headline_rows[1:], ev.labels, strict=True):
        expected = source[key]
        assert value == "n/a" if math.isnan(expected) else float(value) == pytest.approx(expected, abs=5e-5), label
