"""The converged linear probe: standardised features, logistic regression fitted to convergence, C chosen on validation.

Published linear evaluations of foundation encoders (DINOv2, RAD-DINO) fit a
logistic regression to convergence on frozen features; a few epochs of the
fine-tuning optimiser on the same features leave the validation accuracy swinging
from epoch to epoch, which makes a ranking of sources noise. Here:

1. the training features are standardised (mean 0, standard deviation 1 per
   feature, statistics of the training part only);
2. scikit-learn's ``LogisticRegression`` (L-BFGS, multinomial, run until its
   tolerance is met) is fitted for each inverse regularisation strength ``C`` of
   a logarithmic grid;
3. the ``C`` with the best validation accuracy is kept (ties: the best validation
   log loss, then the stronger regularisation);
4. the standardisation is folded into the linear head (``W' = W / s``,
   ``b' = b - W' m``), so the saved model maps raw backbone features to logits.

:class:`ConvergedProbeIteration` is the training engine's iteration in
``mode: linear_probe``: its first call fits the head as above, and every call
scores its batch without changing a weight, so every epoch reports the same,
converged model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

__all__ = ["ProbeFit", "fit_logistic_probe", "ConvergedProbeIteration", "C_GRID"]

logger = logging.getLogger(__name__)

#: inverse regularisation strengths tried (scikit-learn's ``C``).
C_GRID: tuple[float, ...] = tuple(float(c) for c in np.logspace(-4, 4, 9))


@dataclass
class ProbeFit:
    """A fitted probe.

    Attributes:
        weight: ``(n_classes, n_features)`` for raw (unstandardised) features.
        bias: ``(n_classes,)``.
        C: the chosen inverse regularisation strength.
        val_accuracy: validation accuracy with that ``C``.
        scores: ``{C: validation accuracy}`` of every ``C`` tried.
        iterations: L-BFGS iterations of the chosen fit.
    """

    weight: np.ndarray
    bias: np.ndarray
    C: float
    val_accuracy: float
    scores: dict[float, float] = field(default_factory=dict)
    iterations: int = 0


def fit_logistic_probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray,
                       n_classes: int, Cs: Sequence[float] = C_GRID, max_iter: int = 10_000) -> ProbeFit:
    """Fit the converged probe (see the module docstring).

    Raises:
        ValueError: fewer than two classes in the training part, or no validation images.
    """
    train_x, val_x = np.asarray(train_x, dtype=np.float64), np.asarray(val_x, dtype=np.float64)
    train_y, val_y = np.asarray(train_y, dtype=np.int64), np.asarray(val_y, dtype=np.int64)
    if len(np.unique(train_y)) < 2:
        raise ValueError("a linear probe needs at least two classes among the training images")
    if not len(val_y):
        raise ValueError("a linear probe chooses its regularisation on the validation part, which is empty")
    mean, std = train_x.mean(0), train_x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    z_train, z_val = (train_x - mean) / std, (val_x - mean) / std
    labels = list(range(int(n_classes)))
    best: tuple[float, float, float] | None = None
    chosen: LogisticRegression | None = None
    scores: dict[float, float] = {}
    for c in sorted(float(v) for v in Cs):
        model = LogisticRegression(C=c, max_iter=max_iter, tol=1e-6).fit(z_train, train_y)
        prob = np.zeros((len(val_y), len(labels)))
        prob[:, model.classes_] = model.predict_proba(z_val)
        accuracy = float((prob.argmax(1) == val_y).mean())
        loss = float(log_loss(val_y, np.clip(prob, 1e-12, 1.0), labels=labels))
        scores[c] = accuracy
        key = (accuracy, -loss, -c)
        if best is None or key > best:
            best, chosen = key, model
    assert chosen is not None and best is not None
    coef = np.zeros((len(labels), train_x.shape[1]))
    intercept = np.zeros(len(labels))
    if len(chosen.classes_) == 2 and chosen.coef_.shape[0] == 1:  # binary: one row for the second class
        coef[chosen.classes_[1]], intercept[chosen.classes_[1]] = chosen.coef_[0], chosen.intercept_[0]
    else:
        coef[chosen.classes_], intercept[chosen.classes_] = chosen.coef_, chosen.intercept_
    weight = coef / std
    bias = intercept - weight @ mean
    logger.info("linear probe: C=%g chosen on validation (accuracy %.4f; tried %s)", chosen.C, best[0],
                ", ".join(f"{c:g}: {a:.3f}" for c, a in scores.items()))
    return ProbeFit(weight, bias, float(chosen.C), best[0], scores, int(np.max(chosen.n_iter_)))


class ConvergedProbeIteration:
    """The trainer's iteration for ``mode: linear_probe``: fit once, then only score.

    Args:
        head: the linear head (``nn.Sequential(nn.Linear)``) the engines run.
        train: training items with feature vectors under ``image``.
        val: validation items likewise.
        details: the run's ``linear_probe`` summary entry; the fit's ``C`` and scores are added.
    """

    def __init__(self, head: torch.nn.Module, train: Sequence[dict[str, Any]], val: Sequence[dict[str, Any]],
                 details: dict[str, Any]) -> None:
        self.head = head
        self.train = train
        self.val = val
        self.details = details
        self.fit: ProbeFit | None = None

    def _linear(self) -> torch.nn.Linear:
        layers = [m for m in self.head.modules() if isinstance(m, torch.nn.Linear)]
        if len(layers) != 1:
            raise ValueError(f"the converged linear probe needs a head with one Linear layer, got {len(layers)}")
        return layers[0]

    def fit_head(self) -> ProbeFit:
        """Fit the probe on the cached features and write it into the head."""
        def stack(items: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
            x = np.stack([torch.as_tensor(i["image"]).float().cpu().numpy() for i in items])
            return x, np.array([int(i["label"]) for i in items])

        linear = self._linear()
        (tx, ty), (vx, vy) = stack(self.train), stack(self.val)
        fit = fit_logistic_probe(tx, ty, vx, vy, linear.out_features)
        with torch.no_grad():
            linear.weight.copy_(torch.as_tensor(fit.weight, dtype=linear.weight.dtype))
            linear.bias.copy_(torch.as_tensor(fit.bias, dtype=linear.bias.dtype))
        self.details.update(solver="scikit-learn LogisticRegression (L-BFGS, standardised features)", C=fit.C,
                            val_accuracy_by_C={f"{c:g}": a for c, a in fit.scores.items()},
                            lbfgs_iterations=fit.iterations)
        self.fit = fit
        return fit

    def __call__(self, engine: Any, batchdata: Any) -> dict[str, Any]:
        """Score one batch with the fitted head (fitting it first, once); no weight changes."""
        from monai.utils import CommonKeys as Keys

        if self.fit is None:
            self.fit_head()
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        inputs, targets = batch[0], batch[1]
        engine.network.eval()
        with torch.no_grad():
            pred = engine.network(inputs)
            loss = engine.loss_function(pred, targets)
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, Keys.PRED: pred, Keys.LOSS: loss}
        return engine.state.output
