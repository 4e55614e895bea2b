"""The third-party plugin ``plugins/cxrkit-xrv``: discovered through its entry point, loads its file."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrkit.weights import build_pretrained_backbone, get_source, load_state_dict
from support.weights import big, reference, save

# the large checkpoints a test writes to tmp_path are removed after it
pytestmark = pytest.mark.usefixtures("drop_checkpoints")

XRV_FILE = "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"


@pytest.fixture(scope="module", autouse=True)
def installed():
    try:
        dist = md.distribution("cxrkit-xrv")
    except md.PackageNotFoundError:
        pytest.fail("cxrkit-xrv is not installed: run `pip install -e plugins/cxrkit-xrv` (README setup command)")
    return dist


def xrv_state() -> dict[str, torch.Tensor]:
    """torchxrayvision's release layout: flat torchvision keys, one-channel conv1, 18 pathology outputs."""
    return {**reference("resnet50", in_channels=1), "fc.weight": big(18, 2048), "fc.bias": big(18)}


def test_entry_point_is_declared_by_the_distribution(installed):
    eps = [ep for ep in installed.entry_points if ep.group == "cxrkit.weights"]
    assert [(ep.name, ep.value) for ep in eps] == [("xrv_resnet50", "cxrkit_xrv:XRV_RESNET50")]


def test_cxrkit_list_weights_shows_the_plugin():
    cli = Path(sys.executable).with_name("cxrkit")
    out = subprocess.run([str(cli), "list", "weights"], capture_output=True, text=True, timeout=120, check=True).stdout
    row = next(line for line in out.splitlines() if line.startswith("xrv_resnet50 "))
    assert row.rstrip().endswith("cxrkit-xrv") and "torchxrayvision ResNet50" in row


def test_input_spec():
    source = get_source("xrv_resnet50")
    assert (source.architecture, source.in_channels, source.input_size, source.resize) == ("resnet50", 1, 512, 512)
    assert source.intensity_range == (-1024.0, 1024.0)
    assert source.filenames == (XRV_FILE,)
    assert "torchxrayvision" not in sys.modules


def test_fabricated_release_file_loads_into_a_one_channel_backbone(scratch):
    path = save(xrv_state(), scratch / XRV_FILE)
    backbone, info = build_pretrained_backbone("xrv_resnet50", path)
    assert info["pretrained"] and info["plugin"] == "xrv_resnet50" and info["channels_adapted"] is None
    assert backbone.conv1.in_channels == 1
    ref = reference("resnet50", in_channels=1)
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ref.items())
    loaded = load_state_dict("xrv_resnet50", path)
    assert sorted(loaded.dropped) == ["fc.bias", "fc.weight"] and loaded.matched == 318


def test_fabricated_file_adapts_to_three_channels(scratch):
    path = save(xrv_state(), scratch / XRV_FILE)
    backbone, info = build_pretrained_backbone("xrv_resnet50", path, in_channels=3)
    ref = reference("resnet50", in_channels=1)["conv1.weight"]
    assert torch.equal(backbone.conv1.weight.detach(), ref.repeat(1, 3, 1, 1) / 3)
    assert info["channels_adapted"] == "conv1.weight: 1 -> 3 input channels (repeated over channels and divided by 3)"
