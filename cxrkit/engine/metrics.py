"""Classification metrics as Ignite metrics, named as in the run record.

The evaluator gets, with a prefix (``val_`` during training), every metric of
:data:`cxrkit.metrics.METRICS` under the keys of :func:`cxrkit.metrics.record`:
``accuracy``, ``auc`` (the positive class's ROC AUC, else the macro AUC), per
class ``precision/<class>``, ``sensitivity/<class>``, ``specificity/<class>``,
``f1/<class>``, ``auc/<class>``, the macro and weighted averages
(``macro_sensitivity``...), ``confusion_matrix`` (rows: true class, columns:
predicted class) and ``loss`` (the training loss on the validation set, Ignite's
``Loss``).

The values are not computed here: :class:`ClassificationScores` (an Ignite
``EpochMetric``) keeps the epoch's ``(logits, labels)``, takes the softmax as the
predictions file does, and calls :func:`cxrkit.metrics.evaluate` once per epoch;
each key is a ``MetricsLambda`` reading one of its values. So ``metrics.json``,
the predictions file's report and the bootstrap agree on every shared number,
degenerate cases included. Metrics read ``(logits, labels)`` from the engine
output with :class:`OutputPairs`, which accepts MONAI's decollated list of
per-item dicts or one batch dict.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Sequence

import ignite.distributed as idist
import torch
from ignite.metrics import Accuracy, Average, EpochMetric, Loss, Metric, MetricsLambda

from cxrkit import metrics as definitions
from cxrkit import options

__all__ = [
    "plain_value",
    "lower_is_better",
    "metric_score",
    "pick_metrics",
    "metric_comparator",
    "OutputPairs",
    "OutputValue",
    "ClassificationScores",
    "epoch_scores",
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


class ClassificationScores(EpochMetric):
    """Every metric of :mod:`cxrkit.metrics` over the whole epoch, from logits and integer labels.

    ``compute`` returns one float64 tensor: the values of :func:`cxrkit.metrics.record` in
    :attr:`keys` order, then the confusion matrix's cells row by row. Computed once per epoch (Ignite's
    cached result); under ``torchrun`` every rank gathers all shards (:attr:`gather`) and computes.

    Args:
        class_names: class names by index (record keys use them).
        positive_index: positive class (the headline ``auc``), or ``None`` for the macro AUC.
        output_transform: maps the engine output to ``(logits, labels)``.

    Attributes:
        keys: the scalar keys, in the order of the computed values.
        gather: ``tensor -> tensor of all ranks`` (``None``: Ignite's ``all_gather`` of equal shards);
            :func:`cxrkit.engine.distributed.shard_safe_metrics` sets one for unequal shards.
    """

    def __init__(self, class_names: Sequence[str], positive_index: int | None = None,
                 output_transform: Callable = OutputPairs()) -> None:
        self.classes = [_safe_tag(str(n)) for n in class_names]
        self.positive_index = positive_index
        self.keys = definitions.record_keys(self.classes)
        self.gather: Callable[[torch.Tensor], torch.Tensor] | None = None
        super().__init__(self._values, output_transform=output_transform, check_compute_fn=False)

    def _values(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # the softmax of PredictionsWriter (float32, on the CPU), so metrics.json equals the predictions file's report
        probs = torch.softmax(logits.detach().float().cpu(), dim=1).double().numpy()
        values = definitions.evaluate(labels.detach().cpu().long().numpy(), probs)
        found = definitions.record(values, self.classes, self.positive_index)
        return torch.tensor([found[k] for k in self.keys] + values["confusion"][0].ravel().tolist(),
                            dtype=torch.float64)

    def compute(self) -> torch.Tensor:
        if self._result is None:
            if not self._predictions:
                raise RuntimeError("classification metrics need at least one validation batch on every process")
            pred, target = torch.cat(self._predictions, dim=0), torch.cat(self._targets, dim=0)
            if idist.get_world_size() > 1:
                gather = self.gather or idist.all_gather
                pred, target = gather(pred), gather(target)
            self._result = self.compute_fn(pred, target)
        return self._result

    def value(self, key: str) -> MetricsLambda:
        """The Ignite metric of one key (``accuracy``, ``sensitivity/COVID``, ``confusion_matrix``...)."""
        if key == "confusion_matrix":
            n = len(self.classes)
            return MetricsLambda(_Confusion(len(self.keys), n), self)
        return MetricsLambda(_Item(self.keys.index(key)), self)


class _Item:
    def __init__(self, index: int) -> None:
        self.index = index

    def __call__(self, values: torch.Tensor) -> float:
        return float(values[self.index])


class _Confusion:
    def __init__(self, start: int, n_classes: int) -> None:
        self.start, self.n_classes = start, n_classes

    def __call__(self, values: torch.Tensor) -> torch.Tensor:
        return values[self.start:].round().long().reshape(self.n_classes, self.n_classes)


def epoch_scores(metrics: dict[str, Metric]) -> list[ClassificationScores]:
    """The :class:`ClassificationScores` behind ``metrics`` (each once)."""
    found: list[ClassificationScores] = []
    for metric in metrics.values():
        sources = metric.args if isinstance(metric, MetricsLambda) else (metric,)
        found += [m for m in sources if isinstance(m, ClassificationScores) and all(m is not f for f in found)]
    return found


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
    pairs = OutputPairs()
    scores = ClassificationScores(class_names, positive_index, output_transform=pairs)
    metrics: dict[str, Metric] = {f"{prefix}accuracy": scores.value("accuracy")}
    if loss_function is not None:
        metrics[f"{prefix}loss"] = Loss(loss_function, output_transform=pairs, device=device)
    metrics.update({f"{prefix}{key}": scores.value(key) for key in scores.keys if key != "accuracy"})
    metrics[f"{prefix}confusion_matrix"] = scores.value("confusion_matrix")
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
