"""Classification metrics as Ignite metrics, named as in the run record.

The evaluator gets, with a prefix (``val_`` during training):

* ``accuracy``, ``loss`` (the training loss on the validation set), ``auc``
  (binary: ROC AUC of the positive class' probability; multi-class: macro
  one-vs-rest, scikit-learn's ``roc_auc_score``);
* per class ``precision/<class>``, ``recall/<class>`` (sensitivity),
  ``specificity/<class>`` and ``f1/<class>``;
* ``confusion_matrix`` (rows: true class, columns: predicted class).

Metrics read ``(logits, labels)`` from the engine output with
:class:`OutputPairs`, which accepts MONAI's decollated list of per-item dicts
or one batch dict. Everything is computed by Ignite (``Accuracy``,
``Precision``, ``Recall``, ``Fbeta``, ``ConfusionMatrix``, ``Loss``,
``Average``) and scikit-learn (ROC AUC through Ignite's ``EpochMetric``).
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any, Callable, Sequence

import torch
from ignite.metrics import Accuracy, Average, ConfusionMatrix, EpochMetric, Fbeta, Loss, Metric, MetricsLambda
from ignite.metrics import Precision, Recall

from cxrkit import options

__all__ = [
    "plain_value",
    "lower_is_better",
    "metric_score",
    "pick_metrics",
    "metric_comparator",
    "OutputPairs",
    "OutputValue",
    "ROCAUC",
    "roc_auc",
    "positive_class_index",
    "classification_metrics",
    "training_metrics",
    "NEGATIVE_CLASS_NAMES",
]

#: class names read as "no disease" when choosing the positive class of a binary task.
NEGATIVE_CLASS_NAMES = ("normal", "negative", "no finding", "no_finding", "healthy", "non-covid", "noncovid", "other")


def _stack(values: Sequence[Any]) -> torch.Tensor:
    return torch.stack([torch.as_tensor(v) for v in values])


class OutputPairs:
    """Output transform returning ``(y_pred, y)`` batch tensors from a MONAI engine's output.

    Args:
        pred_key: key of the logits.
        label_key: key of the integer labels.
        softmax: return class probabilities instead of logits.
    """

    def __init__(self, pred_key: str = "pred", label_key: str = "label", softmax: bool = False) -> None:
        self.pred_key, self.label_key, self.softmax = pred_key, label_key, bool(softmax)

    def __call__(self, output: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(output, dict):
            pred, label = output[self.pred_key], output[self.label_key]
        else:  # decollated: a list of per-item dicts
            pred = _stack([item[self.pred_key] for item in output])
            label = _stack([item[self.label_key] for item in output])
        pred = torch.as_tensor(pred).detach().float()
        # MONAI's decollate turns 0-d label tensors into Python numbers, which land on the CPU: labels
        # follow the predictions' device so metrics and losses meet on one device (GPU evaluators)
        label = torch.as_tensor(label, device=pred.device).detach().long().reshape(-1)
        if self.softmax:
            pred = torch.softmax(pred, dim=1)
        return pred, label


class OutputValue:
    """Output transform returning one scalar (e.g. the loss) from a MONAI engine's output."""

    def __init__(self, key: str = "loss") -> None:
        self.key = key

    def __call__(self, output: Any) -> torch.Tensor:
        value = output[self.key] if isinstance(output, dict) else output[0][self.key]
        return torch.as_tensor(value).detach().float().mean()


def roc_auc(probs: torch.Tensor, labels: torch.Tensor, positive_index: int | None = None) -> float:
    """ROC AUC: of ``positive_index``'s probability (binary) or macro one-vs-rest (multi-class).

    Returns ``nan`` (with a warning) when the labels hold fewer than two classes,
    where AUC is undefined.
    """
    from sklearn.metrics import roc_auc_score

    y = labels.cpu().numpy().astype(int)
    p = probs.cpu().double().numpy()
    num_classes = p.shape[1]
    present = set(y.tolist())
    if len(present) < 2:
        warnings.warn("ROC AUC is undefined: the validation labels hold a single class; reporting nan", stacklevel=2)
        return math.nan
    if positive_index is not None or num_classes == 2:
        pos = 1 if positive_index is None else int(positive_index)
        return float(roc_auc_score((y == pos).astype(int), p[:, pos]))
    if len(present) < num_classes:
        # one-vs-rest over the classes present; absent classes have no defined AUC
        cols = sorted(present)
        scores = [roc_auc_score((y == c).astype(int), p[:, c]) for c in cols]
        return float(sum(scores) / len(scores))
    return float(roc_auc_score(y, p / p.sum(axis=1, keepdims=True), multi_class="ovr", average="macro"))


class ROCAUC(EpochMetric):
    """ROC AUC over the whole epoch (scikit-learn), from logits and integer labels.

    Args:
        positive_index: class index whose probability is scored in a binary task;
            ``None`` for macro one-vs-rest over all classes (binary: class 1).
        output_transform: maps the engine output to ``(logits, labels)``.
    """

    def __init__(self, positive_index: int | None = None, output_transform: Callable = OutputPairs()) -> None:
        self.positive_index = positive_index

        def compute(pred: torch.Tensor, target: torch.Tensor) -> float:
            return roc_auc(torch.softmax(pred.float(), dim=1), target.long(), self.positive_index)

        super().__init__(compute, output_transform=output_transform, check_compute_fn=False)


def positive_class_index(class_names: Sequence[str], positive_class: str | None = None) -> int | None:
    """Index of the positive (disease) class of a binary task; ``None`` for multi-class.

    Args:
        class_names: the task's classes, by index.
        positive_class: explicit choice; otherwise the class that is not named like
            "Normal"/"No Finding"/"Negative", else class 1.

    Raises:
        ValueError: ``positive_class`` is not one of the classes.
    """
    names = list(class_names)
    if options.optional(positive_class) is not None:
        if positive_class not in names:
            raise ValueError(f"--positive_class {positive_class!r} is not one of the classes {names}")
        return names.index(str(positive_class))
    if len(names) != 2:
        return None
    negatives = [i for i, n in enumerate(names) if n.strip().lower() in NEGATIVE_CLASS_NAMES]
    if len(negatives) == 1:
        return 1 - negatives[0]
    return 1


def _safe_tag(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.\- ]", "_", name)


def _specificity(index: int) -> Callable[[torch.Tensor], float]:
    def compute(cm: torch.Tensor) -> float:
        cm = cm.double()
        total = cm.sum()
        tp = cm[index, index]
        fp = cm[:, index].sum() - tp
        fn = cm[index, :].sum() - tp
        tn = total - tp - fp - fn
        return float(tn / (tn + fp)) if float(tn + fp) > 0 else math.nan

    return compute


def _item(index: int) -> Callable[[torch.Tensor], float]:
    return lambda values: float(values[index])


def classification_metrics(
    class_names: Sequence[str],
    *,
    prefix: str = "val_",
    positive_index: int | None = None,
    loss_function: Callable | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, Metric]:
    """Validation/evaluation metrics for a ``len(class_names)``-class classifier.

    Args:
        class_names: class names by index; used in the per-class metric names.
        prefix: prepended to every name (``val_accuracy``, ``val_precision/COVID``, ...).
        positive_index: positive class of a binary task (for ``auc``); see
            :func:`positive_class_index`.
        loss_function: if given, adds ``<prefix>loss`` computed with it.
        device: where Ignite accumulates.

    Returns:
        ``{name: ignite Metric}``; the first entry is ``<prefix>accuracy``.
    """
    names = [str(n) for n in class_names]
    num_classes = len(names)
    pairs = OutputPairs()
    metrics: dict[str, Metric] = {f"{prefix}accuracy": Accuracy(output_transform=pairs, device=device)}
    if loss_function is not None:
        metrics[f"{prefix}loss"] = Loss(loss_function, output_transform=pairs, device=device)
    metrics[f"{prefix}auc"] = ROCAUC(positive_index, output_transform=pairs)
    precision = Precision(average=False, output_transform=pairs, device=device)
    recall = Recall(average=False, output_transform=pairs, device=device)
    f1 = Fbeta(1.0, average=False, precision=precision, recall=recall)
    cm = ConfusionMatrix(num_classes, output_transform=pairs, device=device)
    for i, name in enumerate(names):
        tag = _safe_tag(name)
        metrics[f"{prefix}precision/{tag}"] = MetricsLambda(_item(i), precision)
        metrics[f"{prefix}recall/{tag}"] = MetricsLambda(_item(i), recall)
        metrics[f"{prefix}specificity/{tag}"] = MetricsLambda(_specificity(i), cm)
        metrics[f"{prefix}f1/{tag}"] = MetricsLambda(_item(i), f1)
    metrics[f"{prefix}confusion_matrix"] = cm
    return metrics


def training_metrics(prefix: str = "train_", device: torch.device | str = "cpu") -> dict[str, Metric]:
    """Per-epoch training metrics: ``<prefix>accuracy`` (key metric) and ``<prefix>loss`` (mean batch loss)."""
    return {
        f"{prefix}accuracy": Accuracy(output_transform=OutputPairs(), device=device),
        f"{prefix}loss": Average(output_transform=OutputValue("loss"), device=device),
    }


# ---- choosing by a metric: the best model, early stopping, the evaluator's key metric ----------------------


def plain_value(value: Any) -> Any:
    """A metric value as plain Python (float, int or nested lists) for JSON, CSV and TensorBoard."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses)."""
    return "loss" in metric.rsplit("/", 1)[0]


def metric_score(metric: str, value: Any) -> float:
    """A "higher is better" score for ``metric``'s ``value``; NaN or missing scores ``-inf``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -math.inf
    if math.isnan(number):
        return -math.inf
    return -number if lower_is_better(metric) else number


def pick_metrics(metrics: dict[str, Any], name: str, key: bool) -> dict[str, Any]:
    """Split ``metrics`` into the key metric ``{name: m}`` (``key=True``) or all the others.

    Raises:
        ValueError: ``name`` is not one of the metrics.
    """
    if name not in metrics:
        raise ValueError(f"--best_metric {name!r} is not a validation metric; choose one of {', '.join(metrics)}")
    return {name: metrics[name]} if key else {k: v for k, v in metrics.items() if k != name}


def metric_comparator(name: str) -> Callable[[float, float], bool]:
    """``cmp(current, best)``: True when ``current`` is better (lower for losses, else higher)."""
    if lower_is_better(name):
        return lambda current, best: current < best
    return lambda current, best: current > best
