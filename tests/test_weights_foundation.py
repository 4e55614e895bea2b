"""Foundation-model sources load output-for-output: the source's own library and cxrkit embed alike.

For each source a small model is built with random weights by the library the
source publishes with (transformers, open_clip, timm), saved exactly as the
source ships it, loaded through the source's cxrkit record, and the embeddings
compared (max abs difference <= 1e-4, float32). Every tensor of the file is
either loaded or dropped by one of the record's named prefixes.
"""

from __future__ import annotations

import pytest
import torch

from cxrkit.weights import get_source
from cxrkit.weights.load import load_pretrained
from support import foundation as fab

TOLERANCE = 1e-4

CASES = {
    "rad_dino": ("transformers", fab.make_rad_dino),
    "medsiglip": ("transformers", fab.make_medsiglip),
    "biomedclip": ("open_clip", fab.make_biomedclip),
    "chexzero": ("open_clip", fab.make_chexzero),
    "dinov2": ("timm", fab.make_dinov2),
    "imagenet_vit": ("timm", fab.make_imagenet_vit),
}


def _dropped_by_rule(source_name: str, keys: list[str]) -> set[str]:
    """File keys the record's named prefixes drop (after its prefix stripping)."""
    from cxrkit.weights.keyfilter import strip_prefix

    source = get_source(source_name)
    return {k for k in keys if strip_prefix(k, source.strip_prefixes).startswith(source.drop_prefixes)}


@pytest.mark.parametrize("source_name", list(CASES))
def test_source_embeds_like_its_own_library(source_name, tmp_path):
    library, make = CASES[source_name]
    fab.require(library)
    made = make(tmp_path)
    backbone = fab.backbone_for(made)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    report = load_pretrained(backbone, source_name, made.path)

    # every backbone tensor came from the file, and every file tensor was loaded or dropped by a named rule
    assert report.matched == len(before)
    assert all(not torch.equal(before[k], v) for k, v in backbone.state_dict().items() if v.numel() > 1)
    assert set(report.dropped) == _dropped_by_rule(source_name, made.file_keys)
    assert report.channels_adapted is None
    images = torch.randn(2, 3, made.image_size, made.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = made.reference(images).float()
        got = backbone(images)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOLERANCE


def test_text_towers_are_dropped_by_name(tmp_path):
    fab.require("transformers")
    made = fab.make_medsiglip(tmp_path)
    report = load_pretrained(fab.backbone_for(made), "medsiglip", made.path)
    text = [k for k in made.file_keys if k.startswith("text_model.")]
    assert text and set(text) <= set(report.dropped)
    assert {"logit_scale", "logit_bias"} <= set(report.dropped)
    assert not [k for k in report.dropped if k.startswith("vision_model.")]


def test_dinov2_with_registers_loads_into_the_register_backbone(tmp_path):
    made = fab.make_dinov2(tmp_path, registers=4)
    backbone = fab.backbone_for(made)
    load_pretrained(backbone, "dinov2", made.path)
    images = torch.randn(2, 3, made.image_size, made.image_size)
    with torch.no_grad():
        assert (backbone(images) - made.reference(images)).abs().max().item() <= TOLERANCE


def test_position_embedding_is_resampled_for_another_image_size(tmp_path):
    from timm.layers import resample_abs_pos_embed

    made = fab.make_dinov2(tmp_path)  # 56 px: a 4 x 4 grid
    config = made.config
    from cxrkit.networks.vit import ViTBackbone

    backbone = ViTBackbone(config, "test-vit", image_size=84)  # a 6 x 6 grid
    report = load_pretrained(backbone, "dinov2", made.path)
    assert "4x4 -> 6x6" in report.channels_adapted
    state = torch.load(made.path, weights_only=True)
    want = resample_abs_pos_embed(state["pos_embed"], new_size=[6, 6], old_size=[4, 4], num_prefix_tokens=1)
    assert torch.allclose(backbone.pos_embed, want)
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 84, 84)).shape == (1, config.embed_dim)


def test_grey_input_adapts_the_patch_embedding(tmp_path):
    made = fab.make_dinov2(tmp_path)
    backbone = fab.backbone_for(made, in_channels=1)
    report = load_pretrained(backbone, "dinov2", made.path)
    assert "patch_embed.proj.weight: 3 -> 1" in report.channels_adapted
    grey = torch.rand(2, 1, made.image_size, made.image_size)
    with torch.no_grad():
        assert (backbone(grey) - made.reference(grey.repeat(1, 3, 1, 1))).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", list(CASES))
def test_every_new_source_states_its_licence_and_preprocessing(name):
    source = get_source(name)
    assert source.license
    assert source.interpolation in ("bilinear", "bicubic")
    assert source.input_size % {"chexzero": 32, "biomedclip": 16, "imagenet_vit": 16}.get(name, 14) == 0
    assert get_source("medsiglip").license_restricted and not get_source("rad_dino").license_restricted
