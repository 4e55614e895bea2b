"""Guessing what a checkpoint really is, to turn a key mismatch into advice.

Used only when verification fails: the structural hints recognise MoCo, SwAV,
DenseNet/CheXNet files and ResNets of another depth from their key names; the
plugin hint tries every other registered weight source's key filter on the file
and names those that would load it cleanly.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterable

__all__ = ["structural_hints", "detect_resnet", "matching_plugins", "file_hints"]

logger = logging.getLogger(__name__)

# key names only transformers have: timm/DINOv2, transformers, OpenAI CLIP, open_clip's timm trunk
_VIT_KEY = re.compile(r"(?:^|\.)(?:blocks\.\d+\.attn\.qkv|encoder\.layers?\.\d+\.(?:attention|self_attn)|"
                      r"transformer\.resblocks\.\d+|cls_token|class_embedding)")
_BLOCK = re.compile(r"(?:^|\.)layer([1-4])\.(\d+)\.conv([1-3])\.weight$")
_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}


def detect_resnet(keys: Iterable[str]) -> tuple[str, str] | None:
    """``(name, description)`` of the torchvision ResNet the keys belong to, if they look like one."""
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for key in keys:
        match = _BLOCK.search(key)
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
            bottleneck |= match.group(3) == "3"
    if sorted(blocks) != [1, 2, 3, 4]:
        return None
    counts = tuple(len(blocks[i]) for i in (1, 2, 3, 4))
    kind = "bottleneck" if bottleneck else "basic"
    name = _RESNETS.get((kind, counts), "resnet")
    return name, f"{kind} blocks {'-'.join(map(str, counts))}"


def structural_hints(keys: list[str], architecture: str) -> list[str]:
    """Hints from key names alone (no registry needed)."""
    hints = []
    if any(k.startswith("encoder_q.") or ".encoder_q." in k for k in keys):
        hints.append("this looks like a MoCo checkpoint (module.encoder_q.*): try plugin moco_v1 or moco_v2")
    if any(k.startswith(("projection_head.", "prototypes.")) or ".projection_head." in k for k in keys):
        hints.append("this looks like a SwAV checkpoint (projection_head.*, prototypes.*): try plugin inat_swav")
    if any("denseblock" in k for k in keys) and not architecture.startswith("densenet"):
        hints.append("this looks like a DenseNet/CheXNet file (features.denseblock*), not a ResNet: try plugin chexnet")
    resnet = detect_resnet(keys)
    if resnet and resnet[0] != architecture:
        pretty = resnet[0].replace("resnet", "ResNet") if resnet[0] != "resnet" else "ResNet of unknown depth"
        hints.append(f"this looks like a {pretty} ({resnet[1]}), but the plugin expects {architecture}")
    vit = next((k for k in keys if _VIT_KEY.search(k)), None)
    if vit and not architecture.startswith("vit"):
        hints.append(f"this looks like a Vision Transformer file ({vit}), not a {architecture}: try a ViT plugin "
                     "(dinov2, rad_dino, biomedclip, chexzero, medsiglip, imagenet_vit)")
    if architecture.startswith("vit") and any(k.endswith("register_tokens") for k in keys) \
            and "reg" not in architecture:
        hints.append(f"this DINOv2 file has register tokens (register_tokens), but backbone {architecture} has "
                     "none: it is a ViT 'with registers' (e.g. dinov2_vitb14_reg4_pretrain.pth), not this plugin's "
                     "file")
    if any(k.startswith(("optimizer.", "state.", "param_groups")) for k in keys):
        hints.append("this looks like an optimizer state, not model weights")
    return hints


def matching_plugins(obj: Any, path: Path, exclude: str) -> list[str]:
    """Names of other registered weight sources whose key filter loads ``obj`` cleanly."""
    from cxrkit.registry import weights
    from cxrkit.weights.keyfilter import apply_key_filter
    from cxrkit.weights.source import WeightSource
    from cxrkit.weights.verify import backbone_spec, compare

    found = []
    for name in weights.names():
        if name == exclude:
            continue
        try:
            source = weights.get(name)
            if not isinstance(source, WeightSource) or not source.pretrained:
                continue
            filtered = apply_key_filter(obj, source, path)
            if compare(filtered.state_dict, backbone_spec(source.architecture, source.in_channels)).ok:
                found.append(name)
        except Exception as exc:  # noqa: BLE001 - a hint must never hide the real error
            logger.debug("plugin %s does not load %s either: %s", name, path, exc)
    return found


def file_hints(obj: Any, raw_keys: list[str], path: Path, source_name: str, architecture: str) -> list[str]:
    """All hints for a file that failed verification for ``source_name``."""
    hints = structural_hints(raw_keys, architecture)
    others = matching_plugins(obj, path, source_name)
    if others:
        hints.append(f"the file loads cleanly with plugin {' / '.join(others)}")
    return hints
