"""The weight API: source records, the key filter, channel adaptation, where files are found."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from cxrkit.networks.backbones import build_backbone
from cxrkit.registry import RegistryError
from cxrkit.weights import (
    WeightError,
    WeightMismatchError,
    WeightSource,
    adapt_conv_channels,
    build_pretrained_backbone,
    find_weight_file,
    get_source,
    load_pretrained,
    load_state_dict,
)
from cxrkit.weights.keyfilter import apply_key_filter, strip_prefix
from support.weights import TINY, big, reference, save, tiny_file

# the large checkpoints a test writes to tmp_path are removed after it
pytestmark = pytest.mark.usefixtures("drop_checkpoints")

R18 = dict(architecture="resnet18", origin="https://example.org", description="test")


# ---------------------------------------------------------------------------- records
def test_builtin_sources_are_declarative_records():
    expected = {"imagenet", "chestxray14", "chexpert", "imagenet_chestxray14", "imagenet_chexpert",
                "inat2021_supervised", "inat2021_supervised_from_scratch", "inat_swav", "moco_v1", "moco_v2",
                "chexnet", "random"}
    from cxrkit.registry import weights

    assert expected <= set(weights.names())
    for name in expected:
        source = get_source(name)
        assert isinstance(source, WeightSource) and source.name == name
        assert source.pretrained == (name != "random")
    assert get_source("chexnet").architecture == "densenet121"
    assert get_source("inat_swav").filenames == ("inat2021_swav_mini_1000_ep.pth",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_source("imagenet").name = "x"


def test_source_validation_names_the_source_and_field():
    with pytest.raises(ValueError, match="weight source 'x': a pretrained source needs at least one file name"):
        WeightSource(name="x", filenames=(), **R18)
    with pytest.raises(ValueError, match="hash_prefix must be lowercase hex"):
        WeightSource(name="x", filenames=("a.pth",), hash_prefix="XYZ", **R18)
    with pytest.raises(ValueError, match="in_channels must be 1 or 3"):
        WeightSource(name="x", filenames=("a.pth",), in_channels=2, **R18)
    with pytest.raises(ValueError, match="bare file names"):
        WeightSource(name="x", filenames=("dir/a.pth",), **R18)
    with pytest.raises(ValueError, match="must be a tuple, not the string"):
        WeightSource(name="x", filenames="a.pth", **R18)
    listy = WeightSource(name="x", filenames=["a.pth"], drop_prefixes=["head."], **R18)
    assert listy.filenames == ("a.pth",) and listy.drop_prefixes == ("head.",)
    assert listy.import_command() == "cxrkit weights import x /path/to/a.pth"


def test_get_source_rejects_a_plugin_that_is_not_a_weight_source(fake_dists):
    fake_dists.add("bad-weights", {"cxrkit.weights": {"not_a_source": "bad_weights_mod:THING"}},
                   {"bad_weights_mod": "THING = 42\n"})
    with pytest.raises(RegistryError, match="provides a int, not a cxrkit.weights.WeightSource"):
        get_source("not_a_source")
    from cxrkit.registry import weights

    weights.unregister("not_a_source")


# ---------------------------------------------------------------------------- key filter
def test_prefixes_are_stripped_longest_first():
    prefixes = ("module.", "module.encoder_q.")
    assert strip_prefix("module.encoder_q.conv1.weight", prefixes) == "conv1.weight"
    assert strip_prefix("module.conv1.weight", prefixes) == "conv1.weight"
    assert strip_prefix("conv1.weight", prefixes) == "conv1.weight"


def test_heads_are_dropped_by_exact_prefix_never_substring(tmp_path):
    source = WeightSource(name="x", filenames=("a.pth",), drop_prefixes=("fc.",), **R18)
    ref = reference("resnet18")
    filtered = apply_key_filter({**ref, "fc.weight": big(10, 512), "layer1.fc.extra": big(3)}, source, "f")
    assert filtered.dropped == ["fc.weight"]
    assert "layer1.fc.extra" in filtered.state_dict
    path = save({**ref, "fc.weight": big(10, 512), "xfc.weight": big(3)}, tmp_path / "a.pth")
    with pytest.raises(WeightMismatchError, match=r"1 unexpected \(xfc.weight\)") as err:
        load_state_dict(source, path)
    assert err.value.unexpected == ["xfc.weight"]


def test_two_keys_mapping_to_one_is_an_error(tmp_path):
    source = WeightSource(name="x", filenames=("a.pth",), **R18)
    ref = reference("resnet18")
    path = save({**ref, "module.conv1.weight": ref["conv1.weight"]}, tmp_path / "a.pth")
    with pytest.raises(WeightMismatchError, match="'conv1.weight' and 'module.conv1.weight' both become 'conv1.weight'"):
        load_state_dict(source, path)


def test_filter_fn_and_renames_map_a_foreign_checkpoint(tmp_path):
    def from_keras_like(state):
        return {k.replace("backbone/", "").replace("/", "."): v for k, v in state.items()}

    source = WeightSource(name="foreign", filenames=("f.pth",), container_keys=("weights",),
                          strip_prefixes=("net.",), drop_prefixes=("head/",),
                          renames=((r"^backbone/stem/", "backbone/conv1/"),), filter_fn=from_keras_like, **R18)
    ref = reference("resnet18")
    foreign = {"net.backbone/" + k.replace(".", "/").replace("conv1/", "stem/", 1 if k.startswith("conv1") else 0): v
               for k, v in ref.items()}
    foreign["net.head/dense"] = big(7, 512)
    path = save({"weights": foreign, "step": 5}, tmp_path / "f.pth")
    loaded = load_state_dict(source, path)
    assert loaded.dropped == ["net.head/dense"]
    assert all(torch.equal(loaded.state_dict[k], v) for k, v in ref.items())


def test_failing_filter_fn_names_the_plugin(tmp_path):
    def broken(state):
        raise KeyError("stem")

    source = WeightSource(name="brk", filenames=("a.pth",), filter_fn=broken, **R18)
    path = tiny_file(tmp_path, "a.pth")
    with pytest.raises(WeightError, match="the filter_fn of plugin 'brk' failed: KeyError"):
        load_state_dict(source, path)


# ---------------------------------------------------------------------------- channels
def test_adapt_conv_channels_values():
    w = torch.randn(8, 3, 7, 7)
    assert torch.equal(adapt_conv_channels(w, 1), w.sum(dim=1, keepdim=True))
    g = torch.randn(8, 1, 7, 7)
    assert torch.equal(adapt_conv_channels(g, 3), g.repeat(1, 3, 1, 1) / 3)
    assert adapt_conv_channels(w, 3) is w
    with pytest.raises(ValueError, match="only 1 <-> 3"):
        adapt_conv_channels(torch.randn(8, 2, 7, 7), 3)


def test_rgb_weights_into_a_grey_backbone_sum_the_kernel(scratch, tiny):
    path = tiny_file(scratch)
    backbone = build_backbone("resnet18", in_channels=1)
    report = load_pretrained(backbone, TINY, path)
    ref = reference("resnet18")
    assert torch.equal(backbone.conv1.weight.detach(), ref["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(backbone.layer4[1].bn2.weight.detach(), ref["layer4.1.bn2.weight"])
    assert report.channels_adapted == "conv1.weight: 3 -> 1 input channels (summed over channels)"
    # a grey image gives the response of its RGB copy through the original kernel
    x = torch.rand(1, 1, 16, 16)
    conv = torch.nn.functional.conv2d
    assert torch.allclose(conv(x, backbone.conv1.weight), conv(x.repeat(1, 3, 1, 1), ref["conv1.weight"]), atol=1e-4)


def test_grey_weights_into_an_rgb_backbone_repeat_and_divide(scratch):
    grey = WeightSource(name="grey", filenames=("g.pth",), in_channels=1, mean=(0.5,), std=(0.25,), **R18)
    ref1 = reference("resnet18", in_channels=1)
    path = save(ref1, scratch / "g.pth")
    loaded = load_state_dict(grey, path)
    assert loaded.state_dict["conv1.weight"].shape == (64, 1, 7, 7) and loaded.channels_adapted is None
    rgb = load_state_dict(grey, path, in_channels=3)
    assert torch.equal(rgb.state_dict["conv1.weight"], ref1["conv1.weight"].repeat(1, 3, 1, 1) / 3)
    assert "1 -> 3 input channels" in rgb.channels_adapted


def test_build_pretrained_backbone_with_other_in_channels(scratch, tiny):
    path = tiny_file(scratch)
    backbone, info = build_pretrained_backbone(TINY, path, in_channels=1)
    assert backbone.conv1.in_channels == 1 and info["pretrained"] and info["channels_adapted"].startswith("conv1")


# ---------------------------------------------------------------------------- finding files
def test_search_order_explicit_then_env_then_home(tmp_path, monkeypatch, tiny):
    env, home = tmp_path / "env", tmp_path / "home"
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(env))
    monkeypatch.setenv("HOME", str(home))
    in_home = tiny_file(home / ".cache" / "cxrkit" / "weights")
    assert find_weight_file(tiny) == in_home.resolve()
    in_env = tiny_file(env)
    assert find_weight_file(tiny) == in_env.resolve()
    in_env_subdir = tiny_file(env / TINY)
    assert find_weight_file(tiny) == in_env_subdir.resolve()
    other = tiny_file(tmp_path / "elsewhere", name="renamed.bin")
    assert find_weight_file(tiny, other) == other.resolve()  # an explicit path wins, whatever its name
    assert find_weight_file(tiny, env) == in_env_subdir.resolve()  # a folder: its plugin sub-folder first
    with pytest.raises(WeightError, match=f"no weight file for plugin '{TINY}' in the folder"):
        find_weight_file(tiny, tmp_path / "elsewhere")
    with pytest.raises(WeightError, match="no pretrained weights"):
        find_weight_file(get_source("random"))


def test_torch_hub_cache_is_searched_for_torchvision_files_only(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRKIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet50-0676ba61.pth").write_bytes(b"x")
    (hub / "inat2021_swav_mini_1000_ep.pth").write_bytes(b"x")
    assert find_weight_file(get_source("imagenet")) == (hub / "resnet50-0676ba61.pth").resolve()
    with pytest.raises(WeightError, match="not found"):
        find_weight_file(get_source("inat_swav"))


def test_allow_missing_warns_with_the_import_command(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="cxrkit.weights"):
        backbone, info = build_pretrained_backbone("moco_v2", allow_missing=True)
    assert info["pretrained"] is False and info["path"] is None and backbone.num_features == 2048
    assert "RANDOMLY INITIALISED" in caplog.text
    assert "cxrkit weights import moco_v2 /path/to/moco_v2_800ep_pretrain.pth.tar" in caplog.text
    assert "run `cxrkit weights fetch moco_v2 --accept_license`" in caplog.text
    with pytest.raises(WeightError, match="not found"):
        build_pretrained_backbone("moco_v2")


def test_a_failed_load_leaves_the_backbone_unchanged(tmp_path, tiny):
    path = save({k: v for k, v in reference("resnet18").items() if not k.startswith("layer4")}, tmp_path / "r18.pth")
    backbone = build_backbone("resnet18")
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    with pytest.raises(WeightMismatchError, match=r"missing \(layer4.0.conv1.weight"):
        load_pretrained(backbone, TINY, path)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


def test_numpy_scalars_load_safely_but_arrays_need_trust(tmp_path, tiny):
    import numpy as np

    from cxrkit.weights import UnsafeCheckpointError

    for legacy in (False, True):
        path = tiny_file(tmp_path / str(legacy), legacy=legacy, lossMIN=np.float64(0.151), epoch_np=np.int64(3))
        assert load_state_dict(TINY, path).matched == len(reference("resnet18"))
    path = tiny_file(tmp_path, history=np.zeros(3))
    with pytest.raises(UnsafeCheckpointError, match="numpy"):
        load_state_dict(TINY, path)
