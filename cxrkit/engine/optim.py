"""The optimiser and learning-rate schedule of a training run: the study's Adam, or the ViT fine-tuning recipe.

The defaults reproduce Hossain et al. (2022): Adam on every trainable
parameter, one constant learning rate. The recipe timm and the ViT authors use to
fine-tune (BEiT, DINOv2, RAD-DINO evaluations) is available as settings:

* ``opt: adamw`` (decoupled weight decay; biases, norms, tokens and position
  embeddings get no weight decay, as timm's ``no_weight_decay``);
* ``layer_decay: 0.65``: layer-wise learning-rate decay (timm's
  ``param_groups_layer_decay``): block ``i`` of ``N`` at ``layer_decay ** (N - 1 - i)``
  of the rate, the embeddings at ``layer_decay ** N``, the last block, final norm
  and head at the full rate;
* ``lr_schedule: cosine`` with ``warmup_epochs``: linear warm-up, then cosine
  decay to zero at the last epoch, set before every iteration from the engine's
  iteration count (so a resumed run continues the same curve);
* ``drop_path_rate`` (stochastic depth; a backbone setting, see the network).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "WarmupCosine"]

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")


def _groups(network: nn.Module, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups with timm's layer-wise decay on the backbone; the head keeps the full rate."""
    from timm.optim import param_groups_layer_decay

    backbone = getattr(network, "backbone", None)
    if backbone is None or not hasattr(backbone, "group_matcher"):
        raise ValueError(f"layer_decay needs a backbone that names its layers (a ViT); "
                         f"{type(backbone or network).__name__} does not")
    skip = set(getattr(backbone, "no_weight_decay", lambda: ())())
    groups = param_groups_layer_decay(backbone, weight_decay=weight_decay, no_weight_decay_list=skip,
                                      layer_decay=layer_decay)
    head = [p for name, p in network.named_parameters() if not name.startswith("backbone.") and p.requires_grad]
    if head:
        groups.append({"params": head, "weight_decay": weight_decay, "lr_scale": 1.0})
    return groups


def _decay_split(network: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's usual two groups: no weight decay on biases, norms and 1-d parameters (tokens)."""
    decay, no_decay = [], []
    for _, param in network.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or param.shape[0] == 1 else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(network: nn.Module, opt: str = "adam", lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
                    eps: float = 1e-8, weight_decay: float = 0.0, layer_decay: float | None = None,
                    ) -> torch.optim.Optimizer:
    """The run's optimiser over ``network``'s trainable parameters.

    Args:
        network: the classifier (frozen parameters are left out).
        opt: ``adam`` (the study's) or ``adamw``.
        lr: base learning rate (the head's; ViT blocks get less with ``layer_decay``).
        betas: Adam's betas.
        eps: Adam's epsilon.
        weight_decay: L2 penalty (``adam``) or decoupled weight decay (``adamw``).
        layer_decay: layer-wise learning-rate decay in (0, 1]; ``None`` or 1: none.

    Raises:
        ValueError: an unknown optimiser, a layer decay outside (0, 1], or no trainable parameter.
    """
    name = str(opt).strip().lower()
    if name not in OPTIMIZERS:
        raise ValueError(f"--opt must be one of {', '.join(OPTIMIZERS)}, got {opt!r}")
    if layer_decay is not None and not 0.0 < float(layer_decay) <= 1.0:
        raise ValueError(f"--layer_decay must be in (0, 1], got {layer_decay}")
    if not any(p.requires_grad for p in network.parameters()):
        raise ValueError("no trainable parameter: every stage is frozen (see --freeze_until)")
    kwargs = {"lr": float(lr), "betas": tuple(float(b) for b in betas), "eps": float(eps),
              "weight_decay": float(weight_decay)}
    if layer_decay is not None and float(layer_decay) < 1.0:
        params: Any = _groups(network, float(weight_decay), float(layer_decay))
        for group in params:
            group["lr"] = float(lr) * float(group.pop("lr_scale", 1.0))
    elif name == "adamw":
        params = _decay_split(network, float(weight_decay))
    else:  # the study's: one group, exactly as before
        params = [p for p in network.parameters() if p.requires_grad]
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, **kwargs)


class WarmupCosine:
    """Linear warm-up then cosine decay of every parameter group's learning rate, per iteration.

    Handler (MONAI style): validates in ``__init__``, hooks in :meth:`attach`, works in :meth:`__call__`.
    The rate of a group is ``initial_lr * factor(t)`` with ``t`` the fractional epoch from the engine's
    iteration count: ``t / warmup_epochs`` during the warm-up, then ``0.5 * (1 + cos(pi * progress))``.

    Args:
        schedule: ``constant`` (the handler does nothing) or ``cosine``.
        epochs: the run's epochs.
        warmup_epochs: epochs of linear warm-up (may be fractional).
        optimizer: the optimiser whose rates are set.

    Raises:
        ValueError: an unknown schedule, or a warm-up not shorter than the run.
    """

    def __init__(self, schedule: str, epochs: int, warmup_epochs: float, optimizer: torch.optim.Optimizer) -> None:
        name = str(schedule).strip().lower()
        if name not in SCHEDULES:
            raise ValueError(f"--lr_schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if name == "cosine" and not 0.0 <= float(warmup_epochs) < int(epochs):
            raise ValueError(f"--warmup_epochs must be in [0, epochs={epochs}), got {warmup_epochs}")
        self.enabled = name == "cosine"
        self.epochs = int(epochs)
        self.warmup = float(warmup_epochs)
        self.optimizer = optimizer

    def attach(self, engine: Any) -> None:
        """Set the rates before every iteration."""
        from ignite.engine import Events

        if not self.enabled:
            return
        for group in self.optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def factor(self, epoch: float) -> float:
        """The multiplier at fractional epoch ``epoch`` (0 at the start)."""
        if self.warmup and epoch < self.warmup:
            return epoch / self.warmup
        progress = (epoch - self.warmup) / max(self.epochs - self.warmup, 1e-12)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    def __call__(self, engine: Any) -> None:
        per_epoch = max(int(getattr(engine.state, "epoch_length", 0) or 1), 1)
        factor = self.factor((engine.state.iteration - 1) / per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
