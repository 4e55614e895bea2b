"""The converged linear probe: standardised features, logistic regression to convergence, C chosen on validation."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxrkit.experiment.logistic_probe import ConvergedProbeIteration, fit_logistic_probe


def _data(seed: int, n: int, classes: int = 3, dim: int = 12):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 2
    y = rng.integers(0, classes, size=n)
    x = centres[y] + rng.normal(size=(n, dim)) * 3 + 100 * rng.normal(size=dim)  # offset and scale to standardise
    return x * rng.uniform(0.1, 50, size=dim), y


def test_fit_matches_scikit_learn_on_standardised_features_and_folds_the_scaling():
    (tx, ty), (vx, vy) = _data(0, 120), _data(1, 60)
    vx = vx - _data(1, 60)[0].mean(0) + tx.mean(0)  # same distribution shift as training
    fit = fit_logistic_probe(tx, ty, vx, vy, n_classes=3, Cs=(0.01, 1.0, 100.0))
    scaler = StandardScaler().fit(tx)
    ref = LogisticRegression(C=fit.C, max_iter=10_000, tol=1e-6).fit(scaler.transform(tx), ty)
    np.testing.assert_allclose(vx @ fit.weight.T + fit.bias, ref.decision_function(scaler.transform(vx)), atol=1e-6)
    best = max(fit.scores.values())
    assert fit.val_accuracy == best == fit.scores[fit.C]
    assert fit.val_accuracy == float((ref.predict(scaler.transform(vx)) == vy).mean())


def test_binary_probe_puts_the_single_row_on_the_second_class():
    (tx, ty), (vx, vy) = _data(2, 80, classes=2), _data(3, 40, classes=2)
    fit = fit_logistic_probe(tx, ty, vx, vy, n_classes=2, Cs=(1.0,))
    ref = LogisticRegression(C=1.0, max_iter=10_000, tol=1e-6).fit(StandardScaler().fit(tx).transform(tx), ty)
    logits = vx @ fit.weight.T + fit.bias
    assert np.array_equal(logits.argmax(1), ref.predict(StandardScaler().fit(tx).transform(vx)))
    assert np.all(fit.weight[0] == 0) and fit.bias[0] == 0


def test_the_probe_iteration_fits_once_and_never_changes_the_head():
    (tx, ty), (vx, vy) = _data(4, 60), _data(5, 30)
    head = torch.nn.Sequential(torch.nn.Linear(12, 3))
    train = [{"image": torch.tensor(x, dtype=torch.float32), "label": int(y)} for x, y in zip(tx, ty)]
    val = [{"image": torch.tensor(x, dtype=torch.float32), "label": int(y)} for x, y in zip(vx, vy)]
    details: dict = {}
    iteration = ConvergedProbeIteration(head, train, val, details)

    class Engine:  # what MONAI's SupervisedTrainer hands an iteration
        network = head
        non_blocking = False
        loss_function = torch.nn.CrossEntropyLoss()

        class state:  # noqa: N801 - MONAI's attribute name
            device = torch.device("cpu")
            output = None

        @staticmethod
        def prepare_batch(batch, device, non_blocking):
            return batch["image"], batch["label"]

    batch = {"image": torch.tensor(tx[:8], dtype=torch.float32), "label": torch.tensor(ty[:8])}
    out = iteration(Engine, batch)
    weight = head[0].weight.detach().clone()
    iteration(Engine, batch)
    assert torch.equal(head[0].weight, weight) and details["C"] == iteration.fit.C
    assert out["loss"].shape == () and out["pred"].shape == (8, 3)
    np.testing.assert_allclose(weight.numpy(), iteration.fit.weight, rtol=1e-5, atol=1e-6)
