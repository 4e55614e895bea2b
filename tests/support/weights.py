"""Weight files fabricated in each source's real layout (see /work/shared/docs/weight-sources.md).

Reference tensors come from torchvision directly (not from cxrkit's backbones)
and are built once per architecture. Large head tensors are stride-0 views
(``expand``), so they keep their real shape without costing disk space. The
fixtures built on these (``scratch``, ``tiny``, ``drop_checkpoints``) are in
``tests/conftest.py``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import re
from pathlib import Path
from typing import Callable

import torch
import torchvision.models as tvm

NBT = "num_batches_tracked"


# ---------------------------------------------------------------------------- helpers
def save_as_if_on_gpu(obj: object, path: Path) -> Path:
    """``torch.save`` with every tensor tagged as stored on ``cuda:0``, as a file written on a GPU is.

    ``torch.load`` without ``map_location`` refuses such a file on a machine without CUDA, which is what
    cxrkit's loaders must cope with; no GPU is needed to write it.
    """
    import torch.serialization as serialization

    real = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        serialization.location_tag = real
    return Path(path)


@functools.lru_cache(maxsize=None)
def reference(arch: str, in_channels: int = 3) -> dict[str, torch.Tensor]:
    """torchvision ``arch`` state dict without its classifier, filled with seeded random values."""
    model = getattr(tvm, arch)(weights=None)
    gen = torch.Generator().manual_seed(sum(map(ord, arch)) + in_channels)
    out = collections.OrderedDict()
    for key, value in model.state_dict().items():
        if key.startswith(("fc.", "classifier.")):
            continue
        if key == ("features.conv0.weight" if arch.startswith("densenet") else "conv1.weight"):
            value = value[:, :in_channels]
        if value.is_floating_point():
            out[key] = torch.randn(value.shape, generator=gen)
        else:
            out[key] = torch.randint(1, 1000, value.shape, generator=gen)
    return out


def big(*shape: int) -> torch.Tensor:
    """A tensor of the real head shape that costs a few bytes on disk."""
    return torch.full((), 0.5).expand(shape)


def prefixed(state: dict, prefix: str) -> collections.OrderedDict:
    return collections.OrderedDict((prefix + k, v) for k, v in state.items())


def without_nbt(state: dict) -> collections.OrderedDict:
    return collections.OrderedDict((k, v) for k, v in state.items() if not k.endswith(NBT))


def legacy_densenet_names(state: dict) -> collections.OrderedDict:
    """Pre-0.4.1 torchvision DenseNet names: ``norm1`` -> ``norm.1``, ``conv2`` -> ``conv.2``."""
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return collections.OrderedDict((pattern.sub(r"\1.\2.", k), v) for k, v in state.items())


def sgd_state(n: int = 3) -> dict:
    return {
        "state": {i: {"momentum_buffer": torch.randn(8)} for i in range(n)},
        "param_groups": [{"lr": 0.03, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
                          "nesterov": False, "params": list(range(n))}],
    }


def adam_state(n: int = 3) -> dict:
    return {
        "state": {i: {"step": torch.tensor(100.0), "exp_avg": torch.randn(8), "exp_avg_sq": torch.rand(8)}
                  for i in range(n)},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                          "amsgrad": False, "params": list(range(n))}],
    }


def plateau_state() -> dict:
    return {"factor": 0.5, "min_lrs": [0.0], "patience": 2, "cooldown": 0, "cooldown_counter": 0, "mode": "min",
            "threshold": 1e-4, "threshold_mode": "abs", "best": 0.151, "num_bad_epochs": 1,
            "mode_worse": float("inf"), "eps": 1e-8, "last_epoch": 17}


def swav_heads() -> dict:
    return {
        "projection_head.0.weight": big(2048, 2048), "projection_head.0.bias": big(2048),
        "projection_head.1.weight": big(2048), "projection_head.1.bias": big(2048),
        "projection_head.1.running_mean": big(2048), "projection_head.1.running_var": big(2048),
        "projection_head.1.num_batches_tracked": torch.tensor(10),
        "projection_head.3.weight": big(128, 2048), "projection_head.3.bias": big(128),
        "prototypes.weight": big(3000, 128),
    }


def save(obj: object, path: Path, legacy: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- the layouts
class Layout:
    """One real file layout: how to build it from the reference, what the loader must drop."""

    def __init__(self, plugin: str, filename: str, build: Callable[[dict], dict],
                 drops: list[str] | Callable[[dict], list[str]], arch: str = "resnet50", nbt: bool = True,
                 legacy: bool = False) -> None:
        self.plugin, self.filename, self.build, self._drops = plugin, filename, build, drops
        self.arch, self.nbt, self.legacy = arch, nbt, legacy

    @property
    def drops(self) -> list[str]:
        """File keys the loader must drop (sorted)."""
        drops = self._drops(reference(self.arch)) if callable(self._drops) else self._drops
        return sorted(drops)

    def write(self, folder: Path) -> Path:
        return save(self.build(reference(self.arch)), folder / self.filename, legacy=self.legacy)


def _imagenet(ref):
    return {**ref, "fc.weight": big(1000, 2048), "fc.bias": big(1000)}


def _chest_wrapped(prefix=""):
    def build(ref):
        sd = prefixed({**ref, "fc.0.weight": big(14, 2048), "fc.0.bias": big(14)}, prefix)
        return {"epoch": 17, "lossMIN": 0.151, "state_dict": sd, "optimizer": adam_state(), "scheduler": plateau_state()}
    return build


def _inat(prefix=""):
    def build(ref):
        sd = prefixed({**ref, "fc.weight": big(10000, 2048), "fc.bias": big(10000)}, prefix)
        return {"epoch": 90, "arch": "resnet50", "state_dict": sd, "best_acc1": torch.tensor(72.3), "optimizer": sgd_state()}
    return build


def _swav_training(ref):
    sd = prefixed({**ref, **swav_heads()}, "module.")
    return {"epoch": 1000, "state_dict": sd, "optimizer": sgd_state(),
            "amp": {"loss_scaler0": {"loss_scale": 65536.0, "unskipped": 120}}}


def _moco(heads, with_key_encoder=False):
    def build(ref):
        sd = prefixed({**ref, **heads}, "module.encoder_q.")
        if with_key_encoder:  # the momentum encoder and queue, as in a raw training checkpoint
            sd.update(prefixed({k: big(*v.shape) for k, v in {**ref, **heads}.items()}, "module.encoder_k."))
            sd["module.queue"] = big(128, 65536)
            sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
        return {"epoch": 200, "arch": "resnet50", "state_dict": sd}
    return build


MOCO_V1_HEAD = {"fc.weight": big(128, 2048), "fc.bias": big(128)}
MOCO_V2_HEAD = {"fc.0.weight": big(2048, 2048), "fc.0.bias": big(2048), "fc.2.weight": big(128, 2048), "fc.2.bias": big(128)}


def _chexnet(ref):
    sd = prefixed(legacy_densenet_names(without_nbt(ref)), "module.densenet121.")
    sd["module.densenet121.classifier.0.weight"] = big(14, 1024)
    sd["module.densenet121.classifier.0.bias"] = big(14)
    return {"epoch": 12, "state_dict": sd}


_FC = ["fc.weight", "fc.bias"]
_CHEST_FC = ["fc.0.weight", "fc.0.bias"]
LAYOUTS: dict[str, Layout] = {
    "imagenet-v1": Layout("imagenet", "resnet50-0676ba61.pth", _imagenet, _FC),
    "imagenet-v1-pre0.13-legacy": Layout("imagenet", "resnet50-19c8e357.pth", lambda r: without_nbt(_imagenet(r)),
                                         _FC, nbt=False, legacy=True),
    "imagenet-v2-file": Layout("imagenet", "resnet50-11ad3fa6.pth", _imagenet, _FC),
    "imagenet_v2": Layout("imagenet_v2", "resnet50-11ad3fa6.pth", _imagenet, _FC),
    "chestxray14-wrapped": Layout("chestxray14", "chestxray14.pth.tar", _chest_wrapped(), _CHEST_FC),
    "chestxray14-flat-318": Layout("chestxray14", "chestxray14.pth", dict, []),
    "chexpert-module": Layout("chexpert", "chexpert.pth.tar", _chest_wrapped("module."),
                              ["module.fc.0.weight", "module.fc.0.bias"]),
    "chexpert-wrapped": Layout("chexpert", "chexpert.pth.tar", _chest_wrapped(), _CHEST_FC),
    "imagenet_chestxray14": Layout("imagenet_chestxray14", "ImageNet_chestxray14.pth.tar", _chest_wrapped(), _CHEST_FC),
    "imagenet_chexpert": Layout("imagenet_chexpert", "ImageNet_chexpert.pth.tar", _chest_wrapped(), _CHEST_FC),
    "imagenet_chexpert-flat": Layout("imagenet_chexpert", "ImageNet_chexpert.pth", dict, []),
    "inat2021_supervised": Layout("inat2021_supervised", "inat2021_supervised_large.pth.tar", _inat(), _FC),
    "inat2021_supervised_from_scratch": Layout(
        "inat2021_supervised_from_scratch", "inat2021_supervised_large_from_scratch.pth.tar", _inat(), _FC),
    "inat2021_from_scratch-mini-module": Layout(
        "inat2021_supervised_from_scratch", "inat2021_supervised_large_from_scratch.pth.tar", _inat("module."),
        ["module.fc.weight", "module.fc.bias"]),
    "inat_swav": Layout("inat_swav", "inat2021_swav_mini_1000_ep.pth", _swav_training,
                        ["module." + k for k in swav_heads()]),
    "swav-flat": Layout("swav", "swav_800ep_pretrain.pth.tar", lambda r: prefixed({**r, **swav_heads()}, "module."),
                        ["module." + k for k in swav_heads()]),
    "swav-training-wrapper": Layout("swav", "swav_800ep_pretrain.pth.tar", _swav_training,
                                    ["module." + k for k in swav_heads()]),
    "moco_v1": Layout("moco_v1", "moco_v1_200ep_pretrain.pth.tar", _moco(MOCO_V1_HEAD),
                      ["module.encoder_q." + k for k in MOCO_V1_HEAD]),
    "moco_v1-with-key-encoder-and-queue": Layout(
        "moco_v1", "moco_v1_200ep_pretrain.pth.tar", _moco(MOCO_V1_HEAD, with_key_encoder=True),
        lambda ref: ["module.encoder_q." + k for k in MOCO_V1_HEAD] + ["module.queue", "module.queue_ptr"]
        + ["module.encoder_k." + k for k in list(ref) + list(MOCO_V1_HEAD)]),
    "moco_v2": Layout("moco_v2", "moco_v2_800ep_pretrain.pth.tar", _moco(MOCO_V2_HEAD),
                      ["module.encoder_q." + k for k in MOCO_V2_HEAD]),
    "chexnet-legacy-torch0.3": Layout("chexnet", "model.pth.tar", _chexnet,
                                      ["module.densenet121.classifier.0.weight", "module.densenet121.classifier.0.bias"],
                                      arch="densenet121", nbt=False, legacy=True),
}

BUILTIN_PRETRAINED = {
    "imagenet", "imagenet_v2", "chestxray14", "chexpert", "imagenet_chestxray14", "imagenet_chexpert",
    "inat2021_supervised", "inat2021_supervised_from_scratch", "inat_swav", "swav", "moco_v1", "moco_v2", "chexnet",
}


def assert_same(loaded: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], skip_nbt: bool) -> None:
    for key, want in ref.items():
        if skip_nbt and key.endswith(NBT):
            assert key not in loaded
            continue
        assert torch.equal(loaded[key], want), key



TINY = "test_r18"


def tiny_file(folder: Path, name: str = "r18.pth", legacy: bool = False, **extra) -> Path:
    """A valid ``test_r18`` file: wrapped ResNet18 with a 1000-class fc to drop."""
    sd = {**reference("resnet18"), "fc.weight": big(1000, 512), "fc.bias": big(1000)}
    return save({"epoch": 1, "state_dict": sd, **extra}, folder / name, legacy=legacy)
