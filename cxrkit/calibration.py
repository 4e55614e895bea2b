"""Are the probabilities honest? Expected calibration error, reliability bins and temperature scaling.

* :func:`expected_calibration_error` - top-label ECE with equal-width confidence
  bins (Guo et al., "On calibration of modern neural networks", ICML 2017):
  the average gap between how sure the model is and how often it is right;
* :func:`reliability_bins` - the per-bin numbers a reliability diagram shows;
* :func:`fit_temperature` - one temperature ``T`` that minimises the negative
  log-likelihood of the validation predictions; ``softmax(logits / T)`` keeps
  every prediction (the ranking is unchanged) and only makes the probabilities
  less (``T > 1``) or more (``T < 1``) confident;
* :class:`Calibration` - the fitted temperature, stored in the run folder as
  ``calibration.json`` and applied to every served prediction by the inference
  config's :class:`TemperatureScaled` transform (``cxrkit predict``, ``cxrkit run
  inference``, the MONAI Label server and with it the review page).

Probabilities in ``predictions.csv`` are always the uncalibrated softmax. Because
``softmax(log p / T) = softmax(logits / T)``, the temperature can be fitted and
applied on stored probabilities as well as on logits.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np

from cxrkit.metrics import metric

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_BINS",
    "Calibration",
    "CalibrationError",
    "TemperatureScaled",
    "apply_temperature",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "read_calibration",
    "reliability_bins",
]

logger = logging.getLogger(__name__)

#: the file in a run folder that holds the fitted temperature.
CALIBRATION_FILE = "calibration.json"
#: confidence bins of the ECE and the reliability diagram.
DEFAULT_BINS = 15
_EPS = 1e-12
_T_RANGE = (0.05, 20.0)


class CalibrationError(ValueError):
    """A calibration file or input that cannot be used; the message names it and the fix."""


def _probs(y_prob: Any) -> np.ndarray:
    p = np.asarray(y_prob, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise CalibrationError(f"probabilities must be an (images, classes) array with 2+ classes, got {p.shape}")
    return p


def apply_temperature(y_prob: Any, temperature: float) -> np.ndarray:
    """Temperature-scale softmax probabilities: ``softmax(log(p) / T)`` (= ``softmax(logits / T)``)."""
    p = _probs(y_prob)
    logits = np.log(np.clip(p, _EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def negative_log_likelihood(y_true: Any, y_prob: Any) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = _probs(y_prob)
    y = np.asarray(y_true, dtype=int)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], _EPS, 1.0))))


def reliability_bins(y_true: Any, y_prob: Any, bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Top-label confidence vs accuracy in ``bins`` equal-width bins of ``(0, 1]``.

    Returns:
        ``edges`` (bins + 1), and per bin ``count``, ``confidence`` (mean top probability)
        and ``accuracy`` (share predicted right); empty bins hold ``nan``.
    """
    p = _probs(y_prob)
    y = np.asarray(y_true, dtype=int)
    conf = p.max(axis=1)
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, int(bins) - 1)
    count = np.bincount(which, minlength=int(bins)).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(which, weights=conf, minlength=int(bins)) / count
    # each bin is one weighted set: its images count, the others do not (cxrkit.metrics' accuracy)
    accuracy = metric("accuracy", y, p, weights=which[None, :] == np.arange(int(bins))[:, None])
    return {"edges": edges, "count": count, "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(y_true: Any, y_prob: Any, bins: int = DEFAULT_BINS) -> float:
    """Top-label expected calibration error: ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``."""
    r = reliability_bins(y_true, y_prob, bins)
    n = r["count"].sum()
    used = r["count"] > 0
    return float(np.sum(r["count"][used] / n * np.abs(r["accuracy"][used] - r["confidence"][used])))


def fit_temperature(y_true: Any, y_prob: Any) -> float:
    """The temperature minimising the NLL of ``softmax(log p / T)`` (bounded search over ``log T``).

    Raises:
        CalibrationError: fewer than 2 images, or labels outside the classes.
    """
    from scipy.optimize import minimize_scalar

    p = _probs(y_prob)
    y = np.asarray(y_true, dtype=int)
    if len(y) < 2 or len(y) != len(p):
        raise CalibrationError(f"fitting a temperature needs 2+ labelled images, got {len(y)} labels for {len(p)}")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise CalibrationError(f"labels must be class indices 0..{p.shape[1] - 1}")
    result = minimize_scalar(lambda log_t: negative_log_likelihood(y, apply_temperature(p, math.exp(log_t))),
                             bounds=tuple(math.log(t) for t in _T_RANGE), method="bounded",
                             options={"xatol": 1e-4})
    return float(math.exp(result.x))


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and what it did on the images it was fitted on.

    Attributes:
        temperature: divide the logits by this before the softmax.
        fitted_on: which split it was fitted on (``validation``).
        n_images: images used.
        nll_before: NLL of the uncalibrated probabilities.
        nll_after: NLL after scaling.
        ece_before: ECE before scaling (``bins`` bins).
        ece_after: ECE after scaling.
        bins: ECE bins.
        method: ``temperature scaling``.
    """

    temperature: float
    fitted_on: str
    n_images: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    bins: int = DEFAULT_BINS
    method: str = "temperature scaling"

    @classmethod
    def fit(cls, y_true: Any, y_prob: Any, fitted_on: str = "validation", bins: int = DEFAULT_BINS) -> "Calibration":
        """Fit the temperature on ``(y_true, y_prob)`` and record the before / after numbers."""
        t = fit_temperature(y_true, y_prob)
        after = apply_temperature(y_prob, t)
        return cls(t, fitted_on, len(np.asarray(y_true)), negative_log_likelihood(y_true, y_prob),
                   negative_log_likelihood(y_true, after), expected_calibration_error(y_true, y_prob, bins),
                   expected_calibration_error(y_true, after, bins), int(bins))

    def apply(self, y_prob: Any) -> np.ndarray:
        """Calibrated probabilities."""
        return apply_temperature(y_prob, self.temperature)

    @property
    def at_bound(self) -> bool:
        """Whether the fit stopped at the edge of its search range (e.g. validation predictions all right)."""
        return not _T_RANGE[0] * 1.01 < self.temperature < _T_RANGE[1] / 1.01

    def describe(self) -> str:
        """One line for the CLI, the review page and reports."""
        text = (f"calibrated probabilities: temperature scaling, T = {self.temperature:.3g}, fitted on the "
                f"{self.fitted_on} split ({self.n_images} images)")
        if self.at_bound and self.temperature < 1:
            text += (f"; WARNING: T reached the low end of its range {_T_RANGE}: the {self.fitted_on} predictions are "
                     "all right, so they cannot tell how confident the model should be; fit it on a larger "
                     "validation part")
        elif self.at_bound:
            text += (f"; WARNING: T reached the high end of its range {_T_RANGE}: on the {self.fitted_on} images the "
                     "model's confidence carries no information (equal probabilities fit best); the model is near "
                     "chance there")
        return text

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``calibration.json`` atomically."""
        from cxrkit.atomic import atomic_write_json

        return atomic_write_json(path, asdict(self))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: field -> (check, what it must be) of ``calibration.json``; ``temperature`` first.
_FIELDS: dict[str, tuple[Any, str]] = {
    "temperature": (lambda v: _number(v) and v > 0, "a finite positive number"),
    "fitted_on": (lambda v: isinstance(v, str), "the name of the split it was fitted on"),
    "n_images": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a number of images"),
    "nll_before": (_number, "a finite number"),
    "nll_after": (_number, "a finite number"),
    "ece_before": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "ece_after": (lambda v: _number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "bins": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a number of bins"),
    "method": (lambda v: isinstance(v, str), "the method's name"),
}
_DEFAULTED = ("bins", "method")


def read_calibration(path: str | os.PathLike) -> Calibration | None:
    """The calibration in ``path`` (a ``calibration.json`` or the run folder holding one); ``None`` when absent.

    Every field is checked: the temperature must be a finite positive number, the before / after numbers
    finite numbers, and so on.

    Raises:
        CalibrationError: the file exists but is not a valid calibration (one line: the file, the field and
            what is wrong).
    """
    path = Path(path)
    if path.is_dir():
        path = path / CALIBRATION_FILE
    if not path.is_file():
        return None
    fix = "delete it or run `cxrkit calibrate RUN_DIR` again"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"{path}: not a cxrkit calibration file ({exc}); {fix}") from None
    if not isinstance(data, dict):
        raise CalibrationError(f"{path}: not a cxrkit calibration file (a JSON object expected, got "
                               f"{type(data).__name__}); {fix}")
    for name, (check, what) in _FIELDS.items():
        if name not in data and name in _DEFAULTED:
            continue
        if name not in data:
            raise CalibrationError(f"{path}: {name}: missing; {fix}")
        if not check(data[name]):
            shown = repr(data[name])
            shown = shown if len(shown) <= 60 else shown[:57] + "..."
            raise CalibrationError(f"{path}: {name}: must be {what}, got {shown}; {fix}")
    return Calibration(**{k: data[k] for k in _FIELDS if k in data})


class TemperatureScaled:
    """MONAI-style dictionary transform: divides the logits in ``keys`` by the run's fitted temperature.

    Put it in the inference config's ``postprocessing`` before the softmax. The
    temperature is read from ``calibration_file`` (re-read when the file
    changes); without the file the logits pass unchanged.

    Args:
        keys: the logits keys (``pred``).
        calibration_file: the run folder's ``calibration.json``.

    Raises:
        CalibrationError: the file exists but is not a valid calibration.
    """

    def __init__(self, keys: Sequence[Hashable] | Hashable = "pred", calibration_file: str | os.PathLike | None = None):
        self.keys = [keys] if isinstance(keys, (str, int)) else list(keys)
        self.calibration_file = Path(calibration_file) if calibration_file else None
        self._stamp: float | None = None
        self._calibration: Calibration | None = None
        self.calibration  # noqa: B018 - fail early on a corrupt file

    @property
    def calibration(self) -> Calibration | None:
        """The calibration in force (``None``: uncalibrated)."""
        if self.calibration_file is None:
            return None
        try:
            stamp = self.calibration_file.stat().st_mtime
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self._calibration = read_calibration(self.calibration_file) if stamp is not None else None
            self._stamp = stamp
        return self._calibration

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        calibration = self.calibration
        if calibration is None:
            return d
        for key in self.keys:
            d[key] = d[key] / calibration.temperature
        return d
