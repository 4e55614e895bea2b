"""Files that must not load: another source's file, another architecture, damaged files,
pickles that would run code, missing files; and the published-hash check."""

from __future__ import annotations

import hashlib
import os
import warnings

import pytest
import torch
import torchvision.models as tvm

from cxrkit.weights import (
    CorruptCheckpointError,
    TrustedLoadWarning,
    UnsafeCheckpointError,
    WeightFileNotFoundError,
    WeightHashWarning,
    WeightMismatchError,
    WeightSource,
    load_state_dict,
)
from support.weights import LAYOUTS, TINY, big, reference, save, tiny_file

pytestmark = [pytest.mark.usefixtures("drop_checkpoints"), pytest.mark.filterwarnings("ignore::cxrkit.weights.WeightHashWarning")]


# ---------------------------------------------------------------------------- wrong file for the plugin
def test_chexnet_file_for_a_resnet_plugin_says_densenet(scratch):
    path = LAYOUTS["chexnet-legacy-torch0.3"].write(scratch)
    with pytest.raises(WeightMismatchError) as err:
        load_state_dict("imagenet", path)
    msg = str(err.value)
    assert str(path) in msg and "plugin 'imagenet'" in msg
    assert "0 of 265 backbone tensors match (num_batches_tracked not counted)" in msg and "265 missing (conv1.weight" in msg
    assert "looks like a DenseNet/CheXNet file" in msg
    assert "loads cleanly with plugin chexnet" in msg
    assert len(err.value.missing) == 265 and "densenet121.features.conv0.weight" in err.value.unexpected


def test_moco_file_for_chestxray14_gives_the_moco_hint(scratch):
    path = LAYOUTS["moco_v2"].write(scratch)
    with pytest.raises(WeightMismatchError) as err:
        load_state_dict("chestxray14", path)
    msg = str(err.value)
    assert "this looks like a MoCo checkpoint (module.encoder_q.*)" in msg
    assert "loads cleanly with plugin moco_v1 / moco_v2" in msg
    assert "encoder_q.conv1.weight" in err.value.unexpected


def test_resnet18_file_for_a_resnet50_plugin(scratch):
    path = save({**reference("resnet18"), "fc.weight": big(1000, 512), "fc.bias": big(1000)},
                scratch / "resnet50-0676ba61.pth")
    with pytest.raises(WeightMismatchError) as err:
        load_state_dict("imagenet", path)
    msg = str(err.value)
    assert "this looks like a ResNet18 (basic blocks 2-2-2-2), but the plugin expects resnet50" in msg
    assert "layer1.0.conv1.weight: file 64x64x3x3, backbone 64x64x1x1" in msg
    assert "layer1.0.conv3.weight" in err.value.missing


def test_swav_heads_are_not_silently_dropped_by_a_supervised_plugin(scratch):
    path = LAYOUTS["swav-flat"].write(scratch)
    with pytest.raises(WeightMismatchError) as err:
        load_state_dict("inat2021_supervised", path)
    assert "projection_head.0.weight" in err.value.unexpected
    assert "looks like a SwAV checkpoint" in str(err.value)
    assert "swav" in str(err.value) and "inat_swav" in str(err.value)


def test_file_without_tensors_lists_its_keys(scratch, tiny):
    path = save({"epoch": 3, "optimizer": {"state": {}, "param_groups": []}}, scratch / "r18.pth")
    with pytest.raises(WeightMismatchError, match=r"no tensors found .* the file's keys are: epoch, optimizer"):
        load_state_dict(TINY, path)


# ---------------------------------------------------------------------------- damaged files
def _truncate(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: _truncate(tiny_file(d), 0.6), "truncated"),
        (lambda d: _truncate(tiny_file(d, legacy=True), 0.6), "truncated"),
        (lambda d: _truncate(tiny_file(d, legacy=True), 0.001), "truncated"),
        (lambda d: (d / "r18.pth").write_bytes(os.urandom(4096)) and d / "r18.pth", "not a PyTorch checkpoint"),
        (lambda d: (d / "r18.pth").write_bytes(b"") or d / "r18.pth", "empty"),
        (lambda d: (d / "r18.pth").write_text("<html><body>Access denied</body></html>") and d / "r18.pth",
         "HTML page"),
    ],
    ids=["zip-truncated", "legacy-truncated", "legacy-truncated-in-pickle", "random-bytes", "empty", "html"],
)
def test_damaged_files_are_corrupt_not_unsafe(make, expected, scratch, tiny):
    path = make(scratch)
    if expected == "not a PyTorch checkpoint" and path.read_bytes()[:1] in (b"\x80", b"P"):
        path.write_bytes(b"\x00" + path.read_bytes()[1:])  # keep the random file unambiguous
    with pytest.raises(CorruptCheckpointError) as err:
        load_state_dict(TINY, path, trust=True)
    assert str(path) in str(err.value) and expected in str(err.value)


# ---------------------------------------------------------------------------- pickles that run code
class _RunsCode:
    """Unpickling this calls os.mkdir(marker): a harmless stand-in for a malicious payload."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_code_running_pickle_is_refused_and_not_executed(legacy, scratch, tiny):
    marker = scratch / "payload-ran"
    path = tiny_file(scratch, legacy=legacy, payload=_RunsCode(marker))
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(TINY, path)
    assert not marker.exists()
    msg = str(err.value)
    assert str(path) in msg and "posix.mkdir" in msg and "trust=True" in msg and "--trust" in msg
    assert err.value.globals == ["posix.mkdir"]


def test_trusted_pickle_loads_with_a_warning(scratch, tiny):
    marker = scratch / "payload-ran"
    path = tiny_file(scratch, payload=_RunsCode(marker))
    with pytest.warns(TrustedLoadWarning, match="explicitly trusted"):
        loaded = load_state_dict(TINY, path, trust=True)
    assert marker.exists()  # trust means full unpickling: the payload ran
    assert torch.equal(loaded.state_dict["conv1.weight"], reference("resnet18")["conv1.weight"])


def test_pickled_module_needs_trust_then_loads(scratch, tiny):
    model = tvm.resnet18(weights=None)
    path = save(model, scratch / "r18.pth")
    with pytest.raises(UnsafeCheckpointError, match="torchvision.models.resnet.ResNet"):
        load_state_dict(TINY, path)
    with pytest.warns(TrustedLoadWarning):
        loaded = load_state_dict(TINY, path, trust=True)
    assert torch.equal(loaded.state_dict["layer4.1.bn2.weight"], model.state_dict()["layer4.1.bn2.weight"])
    assert sorted(loaded.dropped) == ["fc.bias", "fc.weight"]


# ---------------------------------------------------------------------------- missing files
def test_missing_file_message_names_file_places_origin_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRKIT_WEIGHTS_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(WeightFileNotFoundError) as err:
        load_state_dict("inat_swav")
    msg = str(err.value)
    assert "inat2021_swav_mini_1000_ep.pth" in msg
    for place in (tmp_path / "env" / "inat_swav", tmp_path / "env", tmp_path / "home/.cache/cxrkit/weights"):
        assert f"  {place}\n" in msg
    assert "https://github.com/visipedia/newt" in msg
    assert "cxrkit weights import inat_swav /path/to/inat2021_swav_mini_1000_ep.pth" in msg
    assert "Get it with:\n  cxrkit weights fetch inat_swav\n" in msg
    assert isinstance(err.value, FileNotFoundError)


def test_missing_torchvision_file_also_looks_in_torch_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("CXRKIT_WEIGHTS_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightFileNotFoundError) as err:
        load_state_dict("imagenet")
    assert f"  {tmp_path / 'torch' / 'hub' / 'checkpoints'}\n" in str(err.value)
    assert "resnet50-0676ba61.pth" in str(err.value)


def test_explicit_missing_path_is_named(tmp_path, tiny):
    with pytest.raises(WeightFileNotFoundError, match=f"does not exist: {tmp_path / 'nope.pth'}"):
        load_state_dict(TINY, tmp_path / "nope.pth")


# ---------------------------------------------------------------------------- published hashes
def _digest(path, alg):
    return hashlib.new(alg, path.read_bytes()).hexdigest()


@pytest.mark.parametrize("alg", ["sha256", "md5"])
def test_hash_prefix_match_and_mismatch(alg, scratch):
    path = tiny_file(scratch)
    good = WeightSource(name="h", architecture="resnet18", filenames=("r18.pth",), origin="o", description="d",
                        hash_prefix=_digest(path, alg)[:8], hash_algorithm=alg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", WeightHashWarning)
        loaded = load_state_dict(good, path)
    assert loaded.hash_ok is True and loaded.digests[alg] == _digest(path, alg)
    bad = WeightSource(name="h", architecture="resnet18", filenames=("r18.pth",), origin="o", description="d",
                       hash_prefix="00000000" if not _digest(path, alg).startswith("0") else "ffffffff",
                       hash_algorithm=alg)
    with pytest.warns(WeightHashWarning, match=f"hash mismatch for plugin 'h'.*{alg} {_digest(path, alg)}"):
        loaded = load_state_dict(bad, path)
    assert loaded.hash_ok is False and loaded.matched == len(reference("resnet18"))  # a warning, not an error


def test_torchvision_name_hash_and_no_published_hash(scratch, tiny):
    path = tiny_file(scratch)
    prefix = _digest(path, "sha256")[:8]
    named = WeightSource(name="tv", architecture="resnet18", filenames=(f"resnet18-{prefix}.pth", "resnet18-abcdef12.pth"),
                         origin="o", description="d", hash_in_filename=True)
    assert named.published_hashes() == {"sha256": (prefix, "abcdef12")}
    assert load_state_dict(named, path).hash_ok is True
    assert load_state_dict(TINY, path).hash_ok is None


def test_builtin_published_hashes():
    from cxrkit.weights import get_source

    assert get_source("imagenet").published_hashes() == {"sha256": ("0676ba61", "19c8e357", "11ad3fa6")}
    assert get_source("moco_v1").published_hashes() == {"md5": ("b251726a",)}
    assert get_source("moco_v2").published_hashes() == {"md5": ("a04e12f8",)}
    assert get_source("inat_swav").published_hashes() == {}
