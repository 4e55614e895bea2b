"""Occlusion probe: does the model still work with only the lungs, and without them?

Each image is shown to the model again twice (in the network's input space, so
the preprocessing is exactly the model's own):

* ``keep_lungs``: everything outside the lung region replaced (the main test: a
  model that learned the disease keeps its accuracy);
* ``remove_lungs``: the lung region replaced (a model that learned the disease loses it).

What replaces a region matters. A flat mean grey is not neutral: on a constructed
set whose class is a corner marker, a grey centre made a marker-reading model
call every image one class, and a model that had learned a central signal did
the same, so a flat fill decides a verdict by itself. Two fills are used instead,
and both directions are reported:

* ``donor`` (the verdict's fill): the same region of ANOTHER image of ANOTHER
  class (seeded shuffle). The replaced part is real radiograph, so the input
  stays in the distribution the model knows, and it carries the other class's
  context: a model that reads the context follows the donor and its predictions
  flip ("follows donor");
* ``blur``: the region itself under a heavy Gaussian blur (sigma = a tenth of
  the side): burned-in text, markers and edges vanish, brightness and large
  opacities stay. A secondary check; it cannot remove low-frequency evidence.

The region border is feathered (a Gaussian-blurred mask), so no sharp seam is
added that a network could react to.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from cxrkit.metrics import evaluate

__all__ = ["FILLS", "DIRECTIONS", "Condition", "donor_indices", "example_indices", "occlude", "blurred", "feathered",
           "balanced_accuracy", "run_occlusion", "OcclusionVerdict", "occlusion_verdict",
           "MIN_BASELINE", "KEEP_DROP", "DIRECTION_GAP"]

FILLS = ("donor", "blur")
DIRECTIONS = ("keep_lungs", "remove_lungs")
#: below this baseline balanced accuracy the probe is inconclusive (the model is near chance).
MIN_BASELINE = 0.65
#: keep-lungs balanced accuracy this far below the baseline counts as a loss ...
KEEP_DROP = 0.15
#: ... when the model also does at least this much better WITHOUT the lungs than with only the lungs.
DIRECTION_GAP = 0.10


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """The macro sensitivity of :mod:`cxrkit.metrics`: mean over the classes present in ``y_true`` (a model
    calling every image one class scores 1/k); ``nan`` without images."""
    y, p = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y.size == 0:
        return float("nan")
    one_hot = np.eye(max(2, int(max(y.max(), p.max())) + 1))[p]  # the predictions as probabilities
    return float(evaluate(y, one_hot, p)["macro_sensitivity"][0])


def donor_indices(labels: Sequence[int], seed: int = 0) -> np.ndarray:
    """For each image, another image of another class (any other image when only one class is present)."""
    rng = np.random.default_rng(seed)
    y = np.asarray(labels)
    out = np.empty(len(y), dtype=int)
    for i, label in enumerate(y):
        pool = np.flatnonzero(y != label)
        if pool.size == 0:
            pool = np.delete(np.arange(len(y)), i)
        out[i] = int(rng.choice(pool)) if pool.size else i
    return out


def example_indices(labels: Sequence[int], per_class: int = 2, limit: int = 4) -> list[int]:
    """Up to ``limit`` images for the example figure, ``per_class`` of each class in turn."""
    y = np.asarray(labels)
    queues = [list(np.flatnonzero(y == c)[:per_class]) for c in np.unique(y)]
    out: list[int] = []
    while any(queues) and len(out) < limit:
        for q in queues:
            if q and len(out) < limit:
                out.append(int(q.pop(0)))
    return out


def feathered(masks: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, H, W)`` masks in ``[0, 1]`` with a soft border (Gaussian blur of ``sigma`` pixels)."""
    from torchvision.transforms.functional import gaussian_blur

    if sigma <= 0:
        return masks.float()
    k = 2 * int(np.ceil(2.5 * sigma)) + 1
    return gaussian_blur(masks.float()[:, None], kernel_size=[k, k], sigma=[sigma, sigma])[:, 0].clamp(0, 1)


def blurred(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """``(B, C, H, W)`` images under a Gaussian blur of ``sigma`` pixels (reflect padding)."""
    from torchvision.transforms.functional import gaussian_blur

    k = min(2 * int(np.ceil(3 * sigma)) + 1, 2 * (min(images.shape[-2:]) // 2) - 1)
    return gaussian_blur(images, kernel_size=[k, k], sigma=[sigma, sigma])


def occlude(images: torch.Tensor, weights: torch.Tensor, fill: torch.Tensor, direction: str) -> torch.Tensor:
    """Replace the region outside (``keep_lungs``) or inside (``remove_lungs``) the soft lung masks by ``fill``.

    Args:
        images: ``(B, C, H, W)`` network inputs.
        weights: ``(B, H, W)`` soft lung masks in ``[0, 1]`` (1 = lung).
        fill: ``(B, C, H, W)`` what replaces the region.
        direction: ``keep_lungs`` or ``remove_lungs``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    w = weights[:, None].to(images.dtype)
    keep = w if direction == "keep_lungs" else 1 - w
    return keep * images + (1 - keep) * fill


@dataclass(frozen=True)
class Condition:
    """The model's results on one kind of occluded image.

    Attributes:
        direction: ``baseline``, ``keep_lungs`` or ``remove_lungs``.
        fill: ``none``, ``donor`` or ``blur``.
        accuracy: share predicted right.
        balanced_accuracy: mean sensitivity over the classes present.
        changed: share of predictions that differ from the unoccluded image's.
        follows_donor: share predicted as the donor's class where it differs from the image's (donor fill only).
        predicted_share: share of images predicted as each class (a collapse shows here).
    """

    direction: str
    fill: str
    accuracy: float
    balanced_accuracy: float
    changed: float
    follows_donor: float | None
    predicted_share: dict[str, float]

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def _condition(direction: str, fill: str, y: np.ndarray, pred: np.ndarray, base: np.ndarray,
               donor_y: np.ndarray | None, classes: Sequence[str]) -> Condition:
    follows = None
    if donor_y is not None:
        differs = donor_y != y
        follows = float(np.mean(pred[differs] == donor_y[differs])) if differs.any() else None
    share = {c: float(np.mean(pred == k)) for k, c in enumerate(classes)}
    return Condition(direction, fill, float(np.mean(pred == y)), balanced_accuracy(y, pred),
                     float(np.mean(pred != base)), follows, share)


def run_occlusion(predict: Callable[[torch.Tensor], np.ndarray], images: torch.Tensor, masks: torch.Tensor,
                  labels: Sequence[int], classes: Sequence[str], *, seed: int = 0, batch_size: int = 16,
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[list[Condition], dict[str, torch.Tensor], np.ndarray]:
    """Predict the images unoccluded and under every direction and fill.

    Args:
        predict: ``(B, C, H, W)`` inputs -> ``(B,)`` predicted class indices.
        images: ``(N, C, H, W)`` network inputs.
        masks: ``(N, H, W)`` lung masks on the input grid (share of lung per pixel, ``[0, 1]``).
        labels: true class per image.
        classes: class names.
        seed: donor shuffle seed.
        batch_size: images per forward pass.
        progress: called with the number of images done after each batch.

    Returns:
        ``(conditions, examples, baseline predictions)``: the conditions start with the
        baseline, then each direction x fill; ``examples`` holds the images
        :func:`example_indices` picks, under each occluded kind (for figures).
    """
    y = np.asarray(labels, dtype=int)
    side = min(images.shape[-2:])
    weights = feathered(masks, sigma=side / 64)
    donors = donor_indices(y, seed)
    n = len(images)

    def predict_all(make: Callable[[slice], torch.Tensor]) -> np.ndarray:
        out = []
        for start in range(0, n, batch_size):
            sl = slice(start, min(n, start + batch_size))
            out.append(np.asarray(predict(make(sl))))
            if progress is not None:
                progress(sl.stop - sl.start)
        return np.concatenate(out) if out else np.zeros(0, dtype=int)

    base = predict_all(lambda sl: images[sl])
    conditions = [_condition("baseline", "none", y, base, base, None, classes)]
    examples: dict[str, torch.Tensor] = {}
    for direction in DIRECTIONS:
        for fill in FILLS:
            def make(sl: slice, direction: str = direction, fill: str = fill) -> torch.Tensor:
                x = images[sl]
                source = images[torch.as_tensor(donors[sl])] if fill == "donor" else blurred(x, side / 10)
                return occlude(x, weights[sl], source, direction)

            pred = predict_all(make)
            examples[f"{direction}/{fill}"] = torch.cat([make(slice(i, i + 1)) for i in example_indices(y)])
            conditions.append(_condition(direction, fill, y, pred, base, y[donors] if fill == "donor" else None,
                                         classes))
    return conditions, examples, base


@dataclass(frozen=True)
class OcclusionVerdict:
    """What the occlusion probe concludes.

    Attributes:
        flag: the model needs what lies outside the lungs (it loses with only the lungs, and does
            better without them than with only them).
        inconclusive: the probe cannot tell (model near chance, or both directions collapse alike).
        text: the conclusion in plain words.
    """

    flag: bool
    inconclusive: bool
    text: str


def occlusion_verdict(conditions: Sequence[Condition], fill: str = "donor") -> OcclusionVerdict:
    """Judge the ``fill`` conditions (default the donor fill) against the baseline; see the module doc."""
    by = {(c.direction, c.fill): c for c in conditions}
    base = by[("baseline", "none")].balanced_accuracy
    keep = by[("keep_lungs", fill)].balanced_accuracy
    remove = by[("remove_lungs", fill)].balanced_accuracy
    numbers = (f"balanced accuracy {base:.2f} on the images as they are, {keep:.2f} with only the lungs kept, "
               f"{remove:.2f} with the lungs removed ({fill} fill)")
    if not base >= MIN_BASELINE:
        return OcclusionVerdict(False, True, f"Inconclusive: the model is near chance on these images ({numbers}).")
    if base - keep > KEEP_DROP and remove - keep > DIRECTION_GAP:
        return OcclusionVerdict(True, False, (
            f"SHORTCUT SUSPECTED: the model needs what lies OUTSIDE the lungs. It loses its accuracy when only the "
            f"lungs are kept and does better when the lungs are removed ({numbers})."))
    if base - keep > KEEP_DROP and base - remove > KEEP_DROP and abs(remove - keep) <= DIRECTION_GAP:
        return OcclusionVerdict(False, True, (
            f"Inconclusive: both occlusions cost about as much ({numbers}); the replaced regions disturb the model "
            "whichever they are, so this probe cannot say where its evidence lies."))
    return OcclusionVerdict(False, False, (
        f"No sign of a shortcut from occlusion: the model keeps its accuracy with only the lungs ({numbers})."
        if base - keep <= KEEP_DROP else
        f"The lungs matter more than their surroundings, though the surroundings help ({numbers})."))
