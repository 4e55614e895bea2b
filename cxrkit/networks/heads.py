"""Classification heads put on top of a pooled backbone.

Every backbone in :mod:`cxrkit.networks.backbones` already ends with global
average pooling, so a head maps ``(B, in_features)`` to ``(B, num_classes)``
logits (no softmax: the losses and the inference post-processing apply it).

Heads:

* ``study``: Hossain et al. (2022): ``Linear(nf, 2048)``, ``Dropout(0.5)``,
  ``Linear(2048, 2048)``, ``ReLU``, ``Dropout(0.5)``, ``Linear(2048, n)``. The
  first dense layer has no activation, as in the study's Keras head.
* ``linear``: a single ``Linear(nf, n)`` (linear probing).
* ``sun2024``: Sun (2024): ``Linear(nf, 1024)``, ``ReLU``, ``Dropout(0.5)``,
  ``Linear(1024, n)``.
"""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

__all__ = ["HEADS", "build_head", "head_names"]


def _study(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 2048),
        nn.Dropout(dropout),
        nn.Linear(2048, 2048),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(2048, num_classes),
    )


def _linear(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    del dropout  # a linear probe has no dropout
    return nn.Sequential(nn.Linear(in_features, num_classes))


def _sun2024(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(1024, num_classes),
    )


#: head name -> ``f(in_features, num_classes, dropout) -> nn.Sequential``.
HEADS: dict[str, Callable[[int, int, float], nn.Sequential]] = {
    "study": _study,
    "linear": _linear,
    "sun2024": _sun2024,
}


def head_names() -> list[str]:
    """Names accepted by :func:`build_head`."""
    return list(HEADS)


def build_head(name: str, in_features: int, num_classes: int, *, dropout: float = 0.5) -> nn.Sequential:
    """Build the head ``name``.

    Args:
        name: one of :data:`HEADS` (``study``, ``linear``, ``sun2024``).
        in_features: width of the backbone's pooled features.
        num_classes: number of output logits (at least 2).
        dropout: dropout probability of the heads that have dropout.

    Returns:
        An ``nn.Sequential`` mapping ``(B, in_features)`` to ``(B, num_classes)`` logits.

    Raises:
        ValueError: unknown head name, fewer than two classes, or a dropout outside ``[0, 1)``.
    """
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choose one of: {', '.join(HEADS)} (e.g. --head study)")
    if int(num_classes) < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return HEADS[name](int(in_features), int(num_classes), float(dropout))
