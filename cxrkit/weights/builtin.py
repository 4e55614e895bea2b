"""The built-in weight sources: the Hossain et al. (2022) comparison, plus CheXNet and baselines.

One declarative :class:`~cxrkit.weights.source.WeightSource` per plugin. The
file layouts (containers, prefixes, heads) are documented in
``docs/weights.md``; nothing elsewhere in cxrkit switches on these names.
"""

from __future__ import annotations

from cxrkit.registry import weights
from cxrkit.weights.fetchspec import FetchSpec
from cxrkit.weights.source import IMAGENET_MEAN, WeightSource

__all__ = ["BUILTIN_SOURCES"]

_TORCHVISION = "https://download.pytorch.org/models/"
_HE2016 = "He K, Zhang X, Ren S, Sun J. Deep Residual Learning for Image Recognition. CVPR 2016."
_ZENODO = "https://zenodo.org/record/5205234 (Hosseinzadeh Taher et al. 2021; github.com/jlianglab/BenchmarkTransferLearning)"
_TAHER2021 = (
    "Hosseinzadeh Taher MR, Haghighi F, Feng R, Gotway MB, Liang J. A Systematic Benchmarking Analysis of "
    "Transfer Learning for Medical Image Analysis. DART 2021 (MICCAI workshop), LNCS 12968."
)
_NEWT = "NeWT benchmark pretrained-model archive, https://github.com/visipedia/newt (Van Horn et al. 2021)"
_VANHORN2021 = (
    "Van Horn G, Cole E, Beery S, Wilber K, Belongie S, Mac Aodha O. Benchmarking Representation Learning "
    "for Natural World Image Collections. CVPR 2021."
)
_MOCO = "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/"
_ZENODO_FILES = "https://zenodo.org/records/5205234/files/"
# The NeWT archive is a 5.7 GB share on cornell.box.com (no direct link), linked from the benchmark's README.
_NEWT_STEPS = (
    "download the NeWT pretrained-model archive (5.7 GB) from "
    "https://cornell.box.com/s/bnyhq5lwobu6fgjrub44zle0pyjijbmw "
    "(linked from https://github.com/visipedia/newt/tree/main/benchmark), unpack it and find {file} among its "
    "PyTorch models"
)
# facebookresearch/moco and facebookresearch/swav publish code and weights under CC BY-NC 4.0.
_FAIR_NC = "CC-BY-NC-4.0"
# MoCo's momentum encoder and queue, if a file still holds them, become these after `module.` is stripped.
_MOCO_DROP = ("fc.", "encoder_k.", "queue")
_SWAV_DROP = ("projection_head.", "prototypes.")
# torchvision's DenseNet loader: pre-0.4.1 files name dense-layer modules "norm.1", "conv.2", ...
_DENSENET_LEGACY = (
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$",
    r"\1\2",
)


def _chest(name: str, stem: str, description: str) -> WeightSource:
    """One of the four Zenodo 5205234 ResNet50s (wrapped ``.pth.tar``, or the flat 318-key re-save)."""
    return WeightSource(
        name=name,
        architecture="resnet50",
        filenames=(f"{stem}.pth.tar", f"{stem}.pth"),
        origin=_ZENODO,
        description=description,
        citation=_TAHER2021,
        drop_prefixes=("fc.",),  # fc.0 = Linear(2048, 14) followed by a Sigmoid
        # Zenodo lists an md5 per file on the record page; not copied here until read from it (unverifiable).
        fetch=FetchSpec(url=f"{_ZENODO_FILES}{stem}.pth.tar?download=1", filename=f"{stem}.pth.tar"),
    )


BUILTIN_SOURCES: tuple[WeightSource, ...] = (
    WeightSource(
        name="imagenet",
        architecture="resnet50",
        filenames=("resnet50-0676ba61.pth", "resnet50-19c8e357.pth", "resnet50-11ad3fa6.pth"),
        origin=_TORCHVISION + "resnet50-0676ba61.pth (torchvision IMAGENET1K_V1; V2 file resnet50-11ad3fa6.pth "
        "also accepted)",
        description="ImageNet-1k supervised ResNet50 (torchvision V1; V2 file accepted)",
        citation=_HE2016,
        hash_prefix="0676ba61",
        hash_in_filename=True,
        search_torch_hub=True,
        license="BSD-3-Clause",
        fetch=FetchSpec(url=_TORCHVISION + "resnet50-0676ba61.pth"),
    ),
    WeightSource(
        name="imagenet_v2",
        architecture="resnet50",
        filenames=("resnet50-11ad3fa6.pth",),
        origin=_TORCHVISION + "resnet50-11ad3fa6.pth (torchvision IMAGENET1K_V2)",
        description="ImageNet-1k supervised ResNet50, torchvision V2 recipe (resize 232)",
        citation=_HE2016 + " Weights: torchvision IMAGENET1K_V2 training recipe (2021).",
        hash_prefix="11ad3fa6",
        hash_in_filename=True,
        resize=232,
        search_torch_hub=True,
        license="BSD-3-Clause",
        fetch=FetchSpec(url=_TORCHVISION + "resnet50-11ad3fa6.pth"),
    ),
    _chest("chestxray14", "chestxray14", "ResNet50 trained on ChestX-ray14 from scratch (in-domain)"),
    _chest("chexpert", "chexpert", "ResNet50 trained on CheXpert from scratch (in-domain)"),
    _chest("imagenet_chestxray14", "ImageNet_chestxray14", "ImageNet ResNet50 further trained on ChestX-ray14"),
    _chest("imagenet_chexpert", "ImageNet_chexpert", "ImageNet ResNet50 further trained on CheXpert"),
    WeightSource(
        name="inat2021_supervised",
        architecture="resnet50",
        filenames=("inat2021_supervised_large.pth.tar",),
        origin=_NEWT,
        description="iNat2021 supervised ResNet50, initialised from ImageNet",
        citation=_VANHORN2021,
        drop_prefixes=("fc.",),  # 10000 species
        fetch=FetchSpec(manual=_NEWT_STEPS.format(file="inat2021_supervised_large.pth.tar")),
    ),
    WeightSource(
        name="inat2021_supervised_from_scratch",
        architecture="resnet50",
        filenames=("inat2021_supervised_large_from_scratch.pth.tar",),
        origin=_NEWT,
        description="iNat2021 supervised ResNet50 trained from scratch",
        citation=_VANHORN2021,
        drop_prefixes=("fc.",),
        fetch=FetchSpec(manual=_NEWT_STEPS.format(file="inat2021_supervised_large_from_scratch.pth.tar")),
    ),
    WeightSource(
        name="inat_swav",
        architecture="resnet50",
        filenames=("inat2021_swav_mini_1000_ep.pth",),
        origin=_NEWT,
        description="iNat2021 Mini SwAV 1k: self-supervised ResNet50 (best in Hossain 2022)",
        citation=_VANHORN2021,
        drop_prefixes=_SWAV_DROP,
        fetch=FetchSpec(manual=_NEWT_STEPS.format(file="inat2021_swav_mini_1000_ep.pth")),
    ),
    WeightSource(
        name="swav",
        architecture="resnet50",
        filenames=("swav_800ep_pretrain.pth.tar",),
        origin="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar (github.com/facebookresearch/swav)",
        description="ImageNet SwAV 800 epochs: self-supervised ResNet50",
        citation="Caron M, Misra I, Mairal J, Goyal P, Bojanowski P, Joulin A. Unsupervised Learning of Visual "
        "Features by Contrasting Cluster Assignments. NeurIPS 2020.",
        std=(0.228, 0.224, 0.225),  # SwAV's own evaluation pipeline
        mean=IMAGENET_MEAN,
        drop_prefixes=_SWAV_DROP,
        license=_FAIR_NC,
        license_restricted=True,
        fetch=FetchSpec(url="https://dl.fbaipublicfiles.com/deepcluster/swav_800ep_pretrain.pth.tar"),
    ),
    WeightSource(
        name="moco_v1",
        architecture="resnet50",
        filenames=("moco_v1_200ep_pretrain.pth.tar",),
        origin=_MOCO + "moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar (github.com/facebookresearch/moco)",
        description="ImageNet MoCo v1, 200 epochs: self-supervised ResNet50",
        citation="He K, Fan H, Wu Y, Xie S, Girshick R. Momentum Contrast for Unsupervised Visual "
        "Representation Learning. CVPR 2020.",
        hash_prefix="b251726a",
        hash_algorithm="md5",
        strip_prefixes=("module.encoder_q.", "module."),
        drop_prefixes=_MOCO_DROP,  # fc = Linear(2048, 128)
        license=_FAIR_NC,
        license_restricted=True,
        fetch=FetchSpec(url=_MOCO + "moco_v1_200ep/moco_v1_200ep_pretrain.pth.tar"),
    ),
    WeightSource(
        name="moco_v2",
        architecture="resnet50",
        filenames=("moco_v2_800ep_pretrain.pth.tar",),
        origin=_MOCO + "moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar (github.com/facebookresearch/moco)",
        description="ImageNet MoCo v2, 800 epochs: self-supervised ResNet50",
        citation="Chen X, Fan H, Girshick R, He K. Improved Baselines with Momentum Contrastive Learning. "
        "arXiv:2003.04297, 2020.",
        hash_prefix="a04e12f8",
        hash_algorithm="md5",
        strip_prefixes=("module.encoder_q.", "module."),
        drop_prefixes=_MOCO_DROP,  # fc.0 = Linear(2048, 2048), fc.2 = Linear(2048, 128)
        license=_FAIR_NC,
        license_restricted=True,
        fetch=FetchSpec(url=_MOCO + "moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar"),
    ),
    WeightSource(
        name="chexnet",
        architecture="densenet121",
        filenames=("model.pth.tar",),
        origin="https://github.com/arnoweng/CheXNet (model.pth.tar in the repository)",
        description="CheXNet: DenseNet121 trained on ChestX-ray14 (arnoweng/CheXNet)",
        citation="Rajpurkar P, Irvin J, Zhu K, et al. CheXNet: Radiologist-Level Pneumonia Detection on Chest "
        "X-Rays with Deep Learning. arXiv:1711.05225, 2017.",
        strip_prefixes=("module.densenet121.", "densenet121.", "module."),
        drop_prefixes=("classifier.",),  # classifier.0 = Linear(1024, 14) followed by a Sigmoid
        renames=(_DENSENET_LEGACY,),
        # The repository states no licence: no use is granted by default, so the user accepts responsibility.
        license="none stated",
        license_restricted=True,
        fetch=FetchSpec(url="https://github.com/arnoweng/CheXNet/raw/master/model.pth.tar"),
    ),
    WeightSource(
        name="random",
        architecture="resnet50",
        filenames=(),
        origin="none: torchvision's default random initialisation",
        description="no pretraining: randomly initialised ResNet50 (the baseline)",
        pretrained=False,
    ),
)

for _source in BUILTIN_SOURCES:
    weights.register(_source.name, _source, origin=f"cxrkit.weights.builtin:{_source.name}")
