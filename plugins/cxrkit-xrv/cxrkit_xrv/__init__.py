"""cxrkit weight plugin for the torchxrayvision ResNet50 (``xrv_resnet50``).

torchxrayvision's ``ResNet(weights="resnet50-res512-all")`` wraps a torchvision
ResNet50 whose first convolution takes one channel and whose ``fc`` has 18
outputs (one per pathology). Its release file is a flat state dict with exactly
torchvision's keys, so cxrkit's declarative key filter only has to drop ``fc.``;
torchxrayvision itself is never imported.
"""

from __future__ import annotations

from cxrkit.weights import FetchSpec, WeightSource

__all__ = ["XRV_RESNET50"]

XRV_RESNET50 = WeightSource(
    name="xrv_resnet50",
    architecture="resnet50",
    filenames=("pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt",),
    origin="https://github.com/mlmed/torchxrayvision/releases/download/v1/"
    "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt (torchxrayvision releases)",
    description="torchxrayvision ResNet50, 512 px, one channel (5 chest X-ray datasets)",
    citation="Cohen JP, Viviano JD, Bertin P, et al. TorchXRayVision: A library of chest X-ray datasets and "
    "models. MIDL 2022.",
    input_size=512,
    resize=512,
    in_channels=1,
    mean=(0.0,),
    std=(1.0,),
    intensity_range=(-1024.0, 1024.0),
    container_keys=("state_dict", "model"),
    strip_prefixes=("module.", "model."),
    drop_prefixes=("fc.",),  # Linear(2048, 18): the 18 pathology outputs
    license="Apache-2.0",  # torchxrayvision's licence; its release assets carry no other terms
    fetch=FetchSpec(url="https://github.com/mlmed/torchxrayvision/releases/download/v1/"
                    "pc-nih-rsna-siim-vin-resnet50-test512-e400-state.pt"),
)
