"""Heads, the classifier (freezing, no-file build), losses with class weights, and the metrics."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from cxrkit.engine.losses import ClassificationFocalLoss, build_loss, class_counts, class_weights
from cxrkit.engine.metrics import classification_metrics, positive_class_index
from cxrkit.networks.classifier import CXRClassifier, freeze_stages
from cxrkit.networks.heads import build_head


@pytest.mark.parametrize(
    "name, layers",
    [
        ("study", [("Linear", 2048), ("Dropout", None), ("Linear", 2048), ("ReLU", None), ("Dropout", None), ("Linear", 3)]),
        ("linear", [("Linear", 3)]),
        ("sun2024", [("Linear", 1024), ("ReLU", None), ("Dropout", None), ("Linear", 3)]),
    ],
)
def test_heads_have_the_papers_layers(name, layers):
    head = build_head(name, 512, 3)
    assert [(type(m).__name__, getattr(m, "out_features", None)) for m in head] == layers
    assert all(m.p == 0.5 for m in head if isinstance(m, torch.nn.Dropout))
    assert head(torch.randn(4, 512)).shape == (4, 3)


def test_head_errors():
    with pytest.raises(ValueError, match="unknown head 'mlp'.*study, linear, sun2024"):
        build_head("mlp", 512, 2)
    with pytest.raises(ValueError, match="at least 2 classes"):
        build_head("study", 512, 1)


def test_classifier_without_weight_file_and_freezing():
    net = CXRClassifier("random", 3, head="sun2024", freeze_until="layer2", pretrained=False)
    assert net.weights_info == {"plugin": "random", "architecture": "resnet50", "path": None, "sha256": None,
                                "pretrained": False}
    assert net.frozen_stages == ["conv1", "bn1", "layer1", "layer2"]
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.conv1", "backbone.bn1", "backbone.layer1", "backbone.layer2"))
                          for n in frozen)
    assert all(p.requires_grad for n, p in net.named_parameters() if n.startswith(("backbone.layer3", "head")))
    net.train()
    assert not net.backbone.layer1.training and net.backbone.layer3.training and net.head.training
    before = net.backbone.bn1.running_mean.clone()
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)
    assert torch.equal(before, net.backbone.bn1.running_mean), "frozen batch norm must keep its statistics"


def test_freeze_errors_and_all():
    net = CXRClassifier("random", 2, head="linear", pretrained=False)
    with pytest.raises(ValueError, match="unknown stage 'layer9'.*conv1, bn1, layer1, layer2, layer3, layer4"):
        freeze_stages(net.backbone, "layer9")
    assert freeze_stages(net.backbone, "null") == []
    assert len(freeze_stages(net.backbone, "all")) == 6
    assert all(not p.requires_grad for p in net.backbone.parameters())


def test_focal_weights_come_from_training_class_counts():
    counts = class_counts([0, 0, 0, 1, 0, 2, 0, 0, 1], 3)
    assert counts == [6, 2, 1]
    weights = class_weights(counts)
    assert torch.allclose(weights.sum(), torch.tensor(3.0))
    assert torch.allclose(weights, torch.tensor([1 / 6, 1 / 2, 1.0]) / (1 / 6 + 1 / 2 + 1.0) * 3)
    assert torch.allclose(class_weights([5, 5]), torch.ones(2))
    loss = build_loss("focal", class_counts=[30, 10], gamma=2.0)
    assert isinstance(loss, ClassificationFocalLoss)
    assert torch.allclose(loss.class_weight, torch.tensor([0.5, 1.5]))
    logits, labels = torch.randn(8, 2), torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
    probs = torch.softmax(logits, 1)
    p_true = probs[torch.arange(8), labels]
    # MONAI's softmax focal loss: mean over items and classes of -w_c * (1-p)^g * log(p) on the true class
    expected = (-(1 - p_true) ** 2 * torch.log(p_true) * torch.tensor([0.5, 1.5])[labels]).sum() / (8 * 2)
    assert torch.allclose(loss(logits, labels), expected, atol=1e-5)
    ce = build_loss("ce", class_counts=[30, 10])
    assert ce.weight is None  # the study's unweighted cross-entropy
    assert torch.allclose(build_loss("ce", class_counts=[30, 10], class_weighted="true").weight, torch.tensor([0.5, 1.5]))


def test_loss_errors():
    with pytest.raises(ValueError, match="no item of class.*Normal"):
        build_loss("focal", class_counts=[4, 0], class_names=["COVID", "Normal"])
    with pytest.raises(ValueError, match="--loss ce or --loss focal"):
        build_loss("dice")


def test_metrics_match_scikit_learn():
    from ignite.engine import Engine

    torch.manual_seed(0)
    names = ["COVID", "Normal", "Viral Pneumonia"]
    logits = torch.randn(40, 3)
    labels = torch.arange(40) % 3
    logits[torch.arange(40), labels] += 1.0
    metrics = classification_metrics(names, prefix="val_", positive_index=None, loss_function=torch.nn.CrossEntropyLoss())
    engine = Engine(lambda e, b: [{"pred": p, "label": y} for p, y in zip(*b)])
    for name, metric in metrics.items():
        metric.attach(engine, name)
    state = engine.run([(logits[:16], labels[:16]), (logits[16:], labels[16:])], max_epochs=1)
    got = state.metrics
    pred = logits.argmax(1).numpy()
    y = labels.numpy()
    assert got["val_accuracy"] == pytest.approx((pred == y).mean())
    assert got["val_loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-5)
    probs = torch.softmax(logits, 1).numpy()
    assert got["val_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    for k, c in enumerate(names):
        assert got[f"val_precision/{c}"] == pytest.approx(precision_score(y, pred, labels=[k], average=None)[0])
        assert got[f"val_sensitivity/{c}"] == pytest.approx(recall_score(y, pred, labels=[k], average=None)[0])
        assert got[f"val_f1/{c}"] == pytest.approx(f1_score(y, pred, labels=[k], average=None)[0], abs=1e-6)
        tn = ((pred != k) & (y != k)).sum()
        fp = ((pred == k) & (y != k)).sum()
        assert got[f"val_specificity/{c}"] == pytest.approx(tn / (tn + fp))
    assert got["val_confusion_matrix"].tolist() == [[int(((y == t) & (pred == p)).sum()) for p in range(3)]
                                                    for t in range(3)]


def test_binary_auc_uses_the_positive_class():
    logits = torch.tensor([[2.0, 0.1], [1.5, 0.2], [0.3, 1.7], [0.6, 0.4]])
    for labels, expected in ((torch.tensor([0, 0, 1, 1]), roc_auc_score([1, 1, 0, 0], logits.softmax(1)[:, 0])),
                             (torch.tensor([1, 1, 1, 1]), math.nan)):  # one class: undefined, not a crash
        auc = classification_metrics(["COVID", "Normal"], positive_index=0)["val_auc"]
        auc.args[0].update((logits, labels))  # every key reads one epoch-level metric
        value = auc.compute()
        assert value == pytest.approx(expected, nan_ok=True)
    assert positive_class_index(["COVID", "Normal"]) == 0
    assert positive_class_index(["Normal", "Pneumonia"]) == 1
    assert positive_class_index(["A", "B", "C"]) is None
    assert positive_class_index(["COVID", "Normal"], "Normal") == 1
    with pytest.raises(ValueError, match="not one of the classes"):
        positive_class_index(["COVID", "Normal"], "Cancer")
