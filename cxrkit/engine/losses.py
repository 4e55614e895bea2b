"""Training losses: cross-entropy (the study's) or MONAI's focal loss with class weights.

Class weights come from the TRAINING split's class frequencies only (never from
validation data). The scheme is inverse frequency normalised so that the
weights sum to the number of classes::

    w_c = (1 / n_c) / sum_k (1 / n_k) * K

A balanced training set therefore gets all-ones weights, and a class twice as
frequent as another gets half its weight. Focal loss (Lin et al. 2017, used for
imbalanced CoronaHack data by Bolhassani 2021) uses these weights per class
(MONAI ``FocalLoss(weight=...)``) with the focusing parameter ``gamma``
(default 2). Cross-entropy is unweighted by default, as in Hossain et al.
(2022); pass ``class_weighted=True`` to weight it the same way.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
from monai.losses import FocalLoss

from cxrkit import options

__all__ = ["LOSSES", "class_counts", "class_weights", "ClassificationFocalLoss", "build_loss"]

#: loss names accepted by :func:`build_loss`.
LOSSES = ("ce", "focal")


def class_counts(labels: Iterable[int], num_classes: int) -> list[int]:
    """Number of items per class index.

    Args:
        labels: integer class indices.
        num_classes: number of classes.

    Returns:
        ``counts[c]`` = how many labels equal ``c``.

    Raises:
        ValueError: a label outside ``[0, num_classes)``.
    """
    counts = [0] * int(num_classes)
    for label in labels:
        index = int(label)
        if not 0 <= index < num_classes:
            raise ValueError(f"label {index} is outside [0, {num_classes})")
        counts[index] += 1
    return counts


def class_weights(counts: Sequence[int], class_names: Sequence[str] | None = None) -> torch.Tensor:
    """Inverse-frequency class weights normalised to sum to the number of classes.

    Args:
        counts: training items per class.
        class_names: names used in the error message.

    Returns:
        A float tensor of shape ``(len(counts),)``.

    Raises:
        ValueError: a class has no training item (its weight would be infinite).
    """
    names = list(class_names) if class_names else [str(i) for i in range(len(counts))]
    empty = [names[i] for i, n in enumerate(counts) if int(n) <= 0]
    if empty:
        raise ValueError(
            f"cannot weight the loss: the training split has no item of class(es) {', '.join(empty)}; "
            "add images of that class, pick another --task, or use --loss ce"
        )
    inverse = torch.tensor([1.0 / float(n) for n in counts], dtype=torch.float32)
    return inverse / inverse.sum() * len(counts)


class ClassificationFocalLoss(FocalLoss):
    """MONAI's :class:`~monai.losses.FocalLoss` for ``(B, C)`` logits and ``(B,)`` integer labels.

    Softmax over classes, labels one-hot encoded, per-class ``weight``. MONAI's
    loss expects a channel dimension on the target; this adds it.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | Sequence[float] | None = None) -> None:
        super().__init__(gamma=float(gamma), weight=weight, use_softmax=True, to_onehot_y=True)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002 - MONAI's names
        if target.ndim == input.ndim - 1:
            target = target.unsqueeze(1)
        return super().forward(input, target)


def build_loss(
    name: str = "ce",
    *,
    class_counts: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    gamma: float = 2.0,
    class_weighted: bool | str | None = None,
    device: torch.device | str | None = None,
) -> nn.Module:
    """Build the training loss.

    Args:
        name: ``"ce"`` (cross-entropy) or ``"focal"`` (MONAI focal loss with softmax).
        class_counts: training items per class; needed when the loss is class weighted.
        class_names: class names, for error messages.
        gamma: focal loss focusing parameter (ignored for ``ce``).
        class_weighted: weight classes by inverse training frequency; ``None`` or ``auto``: ``True`` for
            ``focal`` and ``False`` for ``ce``.
        device: where to put the class-weight tensor.

    Returns:
        A module ``loss(logits (B, C), labels (B,)) -> scalar``.

    Raises:
        ValueError: unknown name, negative gamma, or class weighting without counts / with an empty class.
    """
    key = str(name).strip().lower()
    if key not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose --loss ce or --loss focal")
    weighted = options.auto_flag(class_weighted, "class_weighted_loss", auto=key == "focal")
    weight = None
    if weighted:
        if not class_counts:
            raise ValueError("a class-weighted loss needs the training split's class counts")
        weight = class_weights(class_counts, class_names)
    if key == "ce":
        loss: nn.Module = nn.CrossEntropyLoss(weight=weight)
    else:
        if float(gamma) < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        loss = ClassificationFocalLoss(gamma=float(gamma), weight=weight)
    return loss.to(device) if device is not None else loss
