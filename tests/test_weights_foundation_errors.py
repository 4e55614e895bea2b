"""Bad foundation-model input: one clear line naming the file, the tensor or value, and what was expected.

Each case also checks that nothing was half-loaded: the backbone keeps every
tensor it had before the failed load.
"""

from __future__ import annotations

import json

import pytest
import torch

from cxrkit.networks.backbones import build_backbone
from cxrkit.networks.vit import ViTBackbone, ViTConfig
from cxrkit.weights.errors import CorruptCheckpointError, WeightMismatchError
from cxrkit.weights.load import load_pretrained
from support import foundation as fab
from support.weights import reference


def _unchanged(backbone: torch.nn.Module):
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    return lambda: all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def _first_line(exc: pytest.ExceptionInfo) -> str:
    return str(exc.value).splitlines()[0]


@pytest.mark.filterwarnings("ignore::cxrkit.weights.errors.WeightHashWarning")  # not torchvision's file either
def test_vit_file_given_to_a_resnet_source(tmp_path):
    made = fab.make_dinov2(tmp_path)
    backbone = build_backbone("resnet18")
    unchanged = _unchanged(backbone)
    with pytest.raises(WeightMismatchError) as exc:
        load_pretrained(backbone, "imagenet", made.path)
    line = _first_line(exc)
    assert str(made.path) in line and "imagenet" in line and "cls_token" in line
    assert "Vision Transformer file" in str(exc.value) and "dinov2" in str(exc.value)
    assert unchanged()


def test_resnet_file_given_to_a_vit_source(tmp_path):
    path = tmp_path / "dinov2_vitb14_pretrain.pth"
    torch.save(reference("resnet50"), path)
    backbone = fab.backbone_for(fab.make_dinov2(tmp_path / "ref"))
    unchanged = _unchanged(backbone)
    with pytest.raises(WeightMismatchError) as exc:
        load_pretrained(backbone, "dinov2", path)
    line = _first_line(exc)
    assert str(path) in line and "'dinov2'" in line
    assert "missing (cls_token" in line and "unexpected (conv1.weight" in line
    assert "looks like a ResNet50" in str(exc.value)
    assert unchanged()


def test_dinov2_file_with_registers_given_to_the_source_without(tmp_path):
    made = fab.make_dinov2(tmp_path, registers=4)
    plain = fab.make_dinov2(tmp_path / "plain")
    backbone = fab.backbone_for(plain)  # the dinov2 source's backbone has no registers
    unchanged = _unchanged(backbone)
    with pytest.raises(WeightMismatchError) as exc:
        load_pretrained(backbone, "dinov2", made.path)
    line = _first_line(exc)
    assert str(made.path) in line and "unexpected (reg_token)" in line
    assert "pos_embed: file 1x16x32, backbone 1x17x32" in line
    assert "register tokens (register_tokens)" in str(exc.value)
    assert unchanged()


def test_safetensors_with_a_wrong_shape(tmp_path):
    fab.require("transformers")
    from safetensors.torch import load_file, save_file

    made = fab.make_rad_dino(tmp_path)
    state = load_file(str(made.path))
    state["layernorm.weight"] = torch.ones(16)  # the file's final norm is 32 wide
    save_file(state, str(made.path), metadata={"format": "pt"})
    backbone = fab.backbone_for(made)
    unchanged = _unchanged(backbone)
    with pytest.raises(WeightMismatchError) as exc:
        load_pretrained(backbone, "rad_dino", made.path)
    assert str(made.path) in _first_line(exc) and "norm.weight: file 16, backbone 32" in _first_line(exc)
    assert unchanged()


@pytest.mark.parametrize(("source", "key", "value"), [("rad_dino", "num_attention_heads", 4),
                                                      ("medsiglip", "vision_config.patch_size", 16)])
def test_config_json_disagreeing_with_its_weights(tmp_path, source, key, value):
    fab.require("transformers")
    made = (fab.make_rad_dino if source == "rad_dino" else fab.make_medsiglip)(tmp_path)
    config_path = made.path.with_name("config.json")
    config = json.loads(config_path.read_text())
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    want = node[leaf]
    node[leaf] = value
    config_path.write_text(json.dumps(config))
    backbone = fab.backbone_for(made)
    unchanged = _unchanged(backbone)
    with pytest.raises(WeightMismatchError) as exc:
        load_pretrained(backbone, source, made.path)
    message = str(exc.value)
    assert "\n" not in message
    assert message.startswith(f"{config_path}: {key} is {value}") and f"with {key} {want}" in message
    assert unchanged()
    node[leaf] = want  # the published values load
    config_path.write_text(json.dumps(config))
    assert load_pretrained(backbone, source, made.path).matched == len(backbone.state_dict())


@pytest.mark.parametrize(("plugin", "size", "patch"), [("rad_dino", 50, 14), ("chexzero", 100, 32)])
def test_image_size_the_patch_size_does_not_divide(plugin, size, patch):
    from cxrkit.networks.classifier import CXRClassifier

    with pytest.raises(ValueError) as exc:
        CXRClassifier(plugin, 2, pretrained=False, image_size=size)
    message = str(exc.value)
    assert "\n" not in message and f"image size {size} px" in message and f"patch size is {patch} px" in message


def test_truncated_safetensors_is_corrupt(tmp_path):
    fab.require("transformers")
    made = fab.make_rad_dino(tmp_path)
    data = made.path.read_bytes()
    made.path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated"):
        load_pretrained(fab.backbone_for(made), "rad_dino", made.path)


def test_vit_pooling_choices():
    config = ViTConfig("t", 14, 32, 1, 2, 28)
    with pytest.raises(ValueError, match="no attention-pool head"):
        ViTBackbone(config, "t", pool="map")
    mean = ViTBackbone(config, "t", pool="mean").eval()
    images = torch.rand(1, 3, 28, 28)
    with torch.no_grad():
        tokens = mean.forward_features(images)
        assert torch.allclose(mean(images), tokens[:, 1:].mean(1))
        assert not torch.allclose(mean(images), tokens[:, 0])
    assert tokens.shape == (1, 5, 32) and mean.token_grid(tokens).shape == (1, 32, 2, 2)
