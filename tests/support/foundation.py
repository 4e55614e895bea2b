"""Fabricated foundation-model weight files, each made by the source's own library in its published layout.

Every ``make_*`` function builds a small model (fewer layers, narrower) with random
weights in the library the source publishes with, saves it exactly as the source
ships it (file name, container, safetensors or pickle, dtype), and returns a
:class:`Fabricated`: the file, the reference embedding function of that library,
and the cxrkit ViT configuration with the same small shape. Every parameter is
perturbed away from its initial value, so a tensor loaded into the wrong place
(or not at all) changes the output.

transformers and open_clip are test-only libraries (the ``test-foundation``
extra); callers skip when they are absent (:func:`require`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch

from cxrkit.networks.vit import ViTBackbone, ViTConfig

__all__ = ["Fabricated", "require", "make_rad_dino", "make_medsiglip", "make_biomedclip", "make_chexzero",
           "make_dinov2", "make_imagenet_vit", "backbone_for"]


@dataclass
class Fabricated:
    """A fabricated weight file and how its own library embeds an image.

    Attributes:
        path: the weight file, named as the source publishes it.
        reference: ``f(images) -> (B, D)`` embedding from the source's library (float32, eval mode).
        config: the cxrkit ViT configuration of the same small shape.
        image_size: the input side the reference model is built for.
        file_keys: every tensor name in the file.
    """

    path: Path
    reference: Callable[[torch.Tensor], torch.Tensor]
    config: ViTConfig
    image_size: int
    file_keys: list[str]


def require(module: str) -> None:
    """Skip the calling test when a test-only library is absent."""
    pytest.importorskip(module, reason=f"{module} is not installed (pip install -e '.[test-foundation]')")


def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def backbone_for(fab: Fabricated, in_channels: int = 3) -> ViTBackbone:
    """The cxrkit backbone of the fabricated model's shape (random weights until loaded)."""
    return ViTBackbone(fab.config, "test-vit", in_channels=in_channels, image_size=fab.image_size).eval()


def _safetensors_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return list(fh.keys())


def make_rad_dino(folder: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, image_size: int = 56,
                  patch: int = 14) -> Fabricated:
    """transformers ``Dinov2Model`` saved with ``save_pretrained``: ``model.safetensors`` + ``config.json``."""
    from transformers import Dinov2Config, Dinov2Model

    config = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                          intermediate_size=4 * hidden, patch_size=patch, image_size=image_size, layerscale_value=1.0)
    model = _perturb(Dinov2Model(config))
    model.save_pretrained(str(folder), safe_serialization=True)
    path = Path(folder) / "model.safetensors"
    return Fabricated(path, lambda x: model(pixel_values=x).pooler_output,
                      ViTConfig("tiny RAD-DINO", patch, hidden, layers, heads, image_size, init_values=1.0),
                      image_size, _safetensors_keys(path))


def make_medsiglip(folder: Path, *, hidden: int = 32, layers: int = 2, heads: int = 2, image_size: int = 56,
                   patch: int = 14) -> Fabricated:
    """transformers ``SiglipModel`` (both towers) saved with ``save_pretrained``, as google/medsiglip-448."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=heads, vocab_size=64, max_position_embeddings=16),
        vision_config=dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image_size, patch_size=patch),
    )
    model = _perturb(SiglipModel(config))
    model.save_pretrained(str(folder), safe_serialization=True)
    path = Path(folder) / "model.safetensors"
    return Fabricated(path, lambda x: model.vision_model(pixel_values=x).pooler_output,
                      ViTConfig("tiny SigLIP", patch, hidden, layers, heads, image_size, mlp_ratio=2.0,
                                class_token=False, act="gelu_tanh", pool="map"),
                      image_size, _safetensors_keys(path))


def make_biomedclip(folder: Path) -> Fabricated:
    """open_clip ``CustomTextCLIP`` from a local config equivalent to BiomedCLIP's ``open_clip_config.json``.

    The published config's vision tower is timm ``vit_base_patch16_224`` behind open_clip's ``TimmModel``
    (``timm_pool ""``, ``timm_proj linear``) and its text tower a Hugging Face BERT; here the vision
    tower is timm's ``vit_tiny_patch16_224`` (same layout, width 192) and the BERT a two-layer one
    whose config.json is written locally (the hub cannot be reached). Saved as
    ``open_clip_pytorch_model.bin`` (``torch.save`` of the state dict).
    """
    from open_clip.model import CustomTextCLIP

    bert = Path(folder) / "tiny-bert"
    bert.mkdir(parents=True, exist_ok=True)
    (bert / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100, "max_position_embeddings": 64,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12}))
    published = {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": str(bert), "hf_tokenizer_name": str(bert), "hf_model_pretrained": False,
                         "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                         "context_length": 256},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (Path(folder) / "open_clip_config.json").write_text(json.dumps(published))
    model = _perturb(CustomTextCLIP(**published["model_cfg"]))
    path = Path(folder) / "open_clip_pytorch_model.bin"
    state = model.state_dict()
    torch.save(state, path)
    return Fabricated(path, lambda x: model.visual.trunk(x),
                      ViTConfig("tiny BiomedCLIP", 16, 192, 12, 3, 224), 224, list(state))


def make_chexzero(folder: Path, *, width: int = 64, layers: int = 2, image_size: int = 64) -> Fabricated:
    """An OpenAI-CLIP-layout model (open_clip ``CLIP`` with QuickGELU) saved as CheXzero saves it.

    CheXzero trains OpenAI's CLIP (``clip.load("ViT-B/32", jit=False)``, fp16 weights on a GPU) and
    saves ``model.state_dict()`` with ``torch.save``: a flat dict with ``visual.*`` and the text tower.
    The file here is float16 like theirs; the reference runs in float32 on the same rounded weights.
    """
    from open_clip.model import CLIP

    model = CLIP(embed_dim=16, quick_gelu=True,
                 vision_cfg=dict(layers=layers, width=width, head_width=32, patch_size=32, image_size=image_size),
                 text_cfg=dict(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    model = _perturb(model).half().float()  # the saved float16 values, computed in float32
    state = {k: v.half() for k, v in model.state_dict().items()}
    path = Path(folder) / "best_64_5e-05_original_22000_0.864.pt"
    torch.save(state, path)
    model.visual.proj = None  # the encoder's output before the image-text projection
    return Fabricated(path, lambda x: model.visual(x),
                      ViTConfig("tiny CLIP", 32, width, layers, width // 32, image_size, pre_norm=True, norm_eps=1e-5,
                                act="quick_gelu"),
                      image_size, list(state))


def make_dinov2(folder: Path, *, registers: int = 0, hidden: int = 32, layers: int = 2, heads: int = 2,
                image_size: int = 56) -> Fabricated:
    """A facebookresearch/dinov2 file (flat state dict, ``mask_token``, ``register_tokens`` when registered).

    The reference is timm's ViT with DINOv2's options (layer scale; registers outside the position
    embedding), whose keys are the reference code's except for the registers, which are written
    back in DINOv2's own layout (``register_tokens``, the class token's position inside ``pos_embed``).
    """
    from timm.models.vision_transformer import VisionTransformer

    model = _perturb(VisionTransformer(img_size=image_size, patch_size=14, embed_dim=hidden, depth=layers,
                                       num_heads=heads, init_values=1e-5, num_classes=0, reg_tokens=registers,
                                       no_embed_class=bool(registers)))
    state = dict(model.state_dict())
    state["mask_token"] = torch.zeros(1, hidden)
    if registers:
        cls_pos = torch.randn(1, 1, hidden) * 0.02  # DINOv2 keeps the class token's position in pos_embed
        state["register_tokens"] = state.pop("reg_token")
        state["pos_embed"] = torch.cat([cls_pos, state["pos_embed"]], dim=1)
        state["cls_token"] = state["cls_token"] - cls_pos
    name = "dinov2_vitb14_reg4_pretrain.pth" if registers else "dinov2_vitb14_pretrain.pth"
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / name
    torch.save(state, path)
    return Fabricated(path, lambda x: model(x),
                      ViTConfig("tiny DINOv2", 14, hidden, layers, heads, image_size, init_values=1e-5,
                                reg_tokens=registers, no_embed_class=bool(registers)),
                      image_size, list(state))


def make_imagenet_vit(folder: Path) -> Fabricated:
    """timm's hub layout (``model.safetensors``, timm keys, 1000-class ``head``), ViT-Ti/16 for speed."""
    import timm
    from safetensors.torch import save_file

    model = _perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000))
    path = Path(folder) / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return Fabricated(path, lambda x: model.forward_head(model.forward_features(x), pre_logits=True),
                      ViTConfig("tiny ViT", 16, 192, 12, 3, 224), 224, _safetensors_keys(path))
