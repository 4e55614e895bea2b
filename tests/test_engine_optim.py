"""The optimiser recipes: the study's Adam unchanged, AdamW with layer-wise decay, warm-up then cosine."""

from __future__ import annotations

import math

import pytest
import torch

from cxrkit.engine.optim import WarmupCosine, build_optimizer
from cxrkit.networks.classifier import CXRClassifier
from cxrkit.networks.heads import build_head
from cxrkit.networks.vit import ViTBackbone, ViTConfig


def _vit_classifier() -> CXRClassifier:
    net = CXRClassifier("random", 2, head="linear", pretrained=False)
    net.backbone = ViTBackbone(ViTConfig("t", 14, 32, 3, 2, 28, init_values=1e-5), "t")
    net.head = build_head("linear", 32, 2)
    return net


def test_the_study_default_is_one_adam_group_of_the_trainable_parameters():
    net = CXRClassifier("random", 2, pretrained=False, freeze_until="layer3")
    opt = build_optimizer(net, lr=1e-3)
    assert type(opt) is torch.optim.Adam and len(opt.param_groups) == 1
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.parameters() if p.requires_grad}


def test_layer_decay_scales_each_block_and_keeps_the_head_at_the_base_rate():
    net = _vit_classifier()
    opt = build_optimizer(net, opt="adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert type(opt) is torch.optim.AdamW
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert rate[id(net.head[0].weight)] == pytest.approx(1e-3)
    # timm: the embeddings are layer 0, block i is layer i + 1, the final norm joins the last block (full rate)
    assert rate[id(net.backbone.blocks[2].mlp.fc1.weight)] == pytest.approx(1e-3)
    assert rate[id(net.backbone.norm.weight)] == pytest.approx(1e-3)
    assert rate[id(net.backbone.blocks[0].mlp.fc1.weight)] == pytest.approx(1e-3 * 0.5 ** 2)
    assert rate[id(net.backbone.patch_embed.proj.weight)] == pytest.approx(1e-3 * 0.5 ** 3)
    assert decay[id(net.backbone.pos_embed)] == 0.0 and decay[id(net.backbone.blocks[0].norm1.weight)] == 0.0
    assert decay[id(net.backbone.blocks[0].attn.qkv.weight)] == 0.05
    assert len({id(p) for g in opt.param_groups for p in g["params"]}) == len(list(net.parameters()))


def test_bad_recipes_are_refused():
    with pytest.raises(ValueError, match="--opt must be one of adam, adamw"):
        build_optimizer(_vit_classifier(), opt="sgd")
    with pytest.raises(ValueError, match="names its layers"):
        build_optimizer(CXRClassifier("random", 2, pretrained=False), layer_decay=0.7)
    with pytest.raises(ValueError, match="--warmup_epochs must be in"):
        WarmupCosine("cosine", 3, 3, torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0))


def test_warmup_then_cosine_by_iteration():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    schedule = WarmupCosine("cosine", epochs=4, warmup_epochs=1, optimizer=opt)

    class Engine:
        handlers = []

        def add_event_handler(self, event, handler):
            self.handlers.append(handler)

        class state:  # noqa: N801 - ignite's attribute name
            epoch_length = 10
            iteration = 1

    engine = Engine()
    schedule.attach(engine)
    seen = []
    for iteration in range(1, 41):
        engine.state.iteration = iteration
        schedule(engine)
        seen.append(opt.param_groups[0]["lr"])
    assert seen[0] == 0.0 and seen[5] == pytest.approx(0.05) and max(seen) == pytest.approx(0.1)
    assert seen[10] == pytest.approx(0.1) and seen[25] == pytest.approx(0.05 * (1 + math.cos(math.pi * 0.5)))
    assert seen[-1] < 0.001 and all(a >= b for a, b in zip(seen[10:], seen[11:]))
    constant = WarmupCosine("constant", 4, 0, opt)
    constant.attach(engine)
    assert len(engine.handlers) == 1  # a constant schedule hooks nothing
