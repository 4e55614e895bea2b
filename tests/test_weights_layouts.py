"""Every built-in weight plugin loads a checkpoint fabricated in its source's real layout, tensor by tensor.

The layouts follow /work/shared/docs/weight-sources.md: container keys, prefixes,
extra head tensors with their real shapes, optimizer/scheduler/amp state, and no
``num_batches_tracked`` in files saved before torch 0.4.1. Reference tensors come
from torchvision directly (not from cxrkit's backbones) and are built once per
architecture. Large head tensors are stride-0 views (``expand``), so they keep
their real shape without costing disk space.

The layouts and helpers (``reference``, ``LAYOUTS``, ``save``...) are in ``support/weights.py``.
"""

from __future__ import annotations

import pytest
import torch

from cxrkit.weights import build_pretrained_backbone, load_pretrained, load_state_dict
from cxrkit.networks.backbones import build_backbone
from support.weights import LAYOUTS, BUILTIN_PRETRAINED, assert_same, reference, sha256

NBT = "num_batches_tracked"
# fabricated torchvision files cannot match the sha256 prefix in their names; test_weights_errors checks the warning
pytestmark = [pytest.mark.usefixtures("drop_checkpoints"), pytest.mark.filterwarnings("ignore::cxrkit.weights.WeightHashWarning")]


# ---------------------------------------------------------------------------- tests
def test_every_builtin_plugin_has_a_layout():
    assert {layout.plugin for layout in LAYOUTS.values()} == BUILTIN_PRETRAINED


@pytest.mark.parametrize("layout_id", sorted(LAYOUTS))
def test_layout_loads_every_tensor_exactly(layout_id, scratch):
    layout = LAYOUTS[layout_id]
    path = layout.write(scratch)
    loaded = load_state_dict(layout.plugin, path)
    ref = reference(layout.arch)
    n_nbt = sum(k.endswith(NBT) for k in ref)
    assert loaded.path == path.resolve() and loaded.plugin == layout.plugin
    assert loaded.sha256 == sha256(path)
    assert loaded.matched == (len(ref) if layout.nbt else len(ref) - n_nbt)
    assert sorted(loaded.dropped) == layout.drops
    assert len(loaded.missing_optional) == (0 if layout.nbt else n_nbt)
    assert set(loaded.state_dict) == (set(ref) if layout.nbt else {k for k in ref if not k.endswith(NBT)})
    assert_same(loaded.state_dict, ref, skip_nbt=not layout.nbt)
    assert loaded.channels_adapted is None


@pytest.mark.parametrize("layout_id", ["chexnet-legacy-torch0.3", "moco_v1-with-key-encoder-and-queue",
                                       "imagenet-v1-pre0.13-legacy"])
def test_load_pretrained_puts_the_file_into_the_backbone(layout_id, scratch):
    layout = LAYOUTS[layout_id]
    path = layout.write(scratch)
    backbone = build_backbone(layout.arch)
    before = {k: v.clone() for k, v in backbone.state_dict().items() if k.endswith(NBT)}
    report = load_pretrained(backbone, layout.plugin, path)
    state = backbone.state_dict()
    ref = reference(layout.arch)
    assert report.plugin == layout.plugin and report.sha256 == sha256(path) and report.path == path.resolve()
    assert report.matched == len(ref) - (0 if layout.nbt else len(before))
    for key, want in ref.items():
        if key.endswith(NBT) and not layout.nbt:
            assert torch.equal(state[key], before[key])  # the model keeps its own counter
        else:
            assert torch.equal(state[key], want), key


def test_build_pretrained_backbone_finds_the_file_in_the_weights_dir(scratch, monkeypatch):
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(scratch / "store"))
    path = LAYOUTS["inat_swav"].write(scratch / "store" / "inat_swav")
    backbone, info = build_pretrained_backbone("inat_swav")
    assert info == {"plugin": "inat_swav", "architecture": "resnet50", "path": str(path.resolve()),
                    "sha256": sha256(path), "pretrained": True, "matched": 318, "hash_ok": None,
                    "verification": "unverifiable", "channels_adapted": None}
    assert_same(backbone.state_dict(), reference("resnet50"), skip_nbt=False)
    with torch.no_grad():
        assert backbone.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 2048)


def test_random_plugin_builds_an_untrained_backbone():
    backbone, info = build_pretrained_backbone("random")
    assert info == {"plugin": "random", "architecture": "resnet50", "path": None, "sha256": None, "pretrained": False}
    assert backbone.num_features == 2048


