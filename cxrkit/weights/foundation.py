"""Foundation-model weight sources: DINOv2, RAD-DINO, BiomedCLIP, CheXzero, MedSigLIP and an ImageNet ViT-B/16.

One declarative :class:`~cxrkit.weights.source.WeightSource` per source, like
:mod:`cxrkit.weights.builtin`: each names the file as its publisher ships it, drops
the parts that are not the image encoder (text towers, projections, mask tokens)
by named prefixes, and maps the rest to timm's ViT keys with a filter function
from :mod:`cxrkit.weights.keymaps`. Preprocessing is each publisher's own
(size, resize mode, mean/std). The layouts are documented in ``docs/weights.md``.
"""

from __future__ import annotations

from cxrkit.registry import weights
from cxrkit.weights.keymaps import dinov2_to_timm, hf_dinov2_to_timm, hf_siglip_to_timm, openai_clip_to_timm
from cxrkit.weights.fetchspec import FetchSpec
from cxrkit.weights.source import WeightSource

__all__ = ["FOUNDATION_SOURCES"]

_HF = "https://huggingface.co/"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# OpenAI CLIP's text tower and the CLIP image-text projection: not the image encoder
_CLIP_TEXT = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection",
              "logit_scale", "attn_mask", "input_resolution", "context_length", "vocab_size")
_HF_DINOV2_CONFIG = (("hidden_size", "embed_dim"), ("num_hidden_layers", "depth"),
                     ("num_attention_heads", "num_heads"), ("patch_size", "patch_size"), ("image_size", "native_size"))

FOUNDATION_SOURCES: tuple[WeightSource, ...] = (
    WeightSource(
        name="dinov2",
        architecture="vit_base_patch14_dinov2",
        filenames=("dinov2_vitb14_pretrain.pth",),
        origin="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth "
        "(github.com/facebookresearch/dinov2, the torch hub backbone dinov2_vitb14)",
        description="DINOv2 ViT-B/14 (self-supervised, LVD-142M natural images), CLS token, 224 px",
        citation="Oquab M, Darcet T, Moutakanni T, et al. DINOv2: Learning Robust Visual Features without "
        "Supervision. TMLR 2024.",
        fetch=FetchSpec(url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"),
        license="Apache-2.0",
        input_size=224,  # DINOv2's linear evaluation: resize 256, centre crop 224 (trained at 518)
        resize=256,
        interpolation="bicubic",  # mean/std: the ImageNet defaults, as DINOv2's evaluation
        strip_prefixes=("module.",),
        drop_prefixes=("mask_token",),  # the masked-image-modelling token, unused by the encoder
        filter_fn=dinov2_to_timm,
    ),
    WeightSource(
        name="rad_dino",
        architecture="vit_base_patch14_dinov2",
        filenames=("model.safetensors",),
        origin=_HF + "microsoft/rad-dino (model.safetensors with config.json, transformers Dinov2Model)",
        description="RAD-DINO: DINOv2 ViT-B/14 trained on chest X-rays (Microsoft), CLS token, 518 px",
        citation="Perez-Garcia F, Sharma H, Bond-Taylor S, et al. Exploring scalable medical image encoders "
        "beyond text supervision. Nature Machine Intelligence 2025.",
        fetch=FetchSpec(hf_hub_id="microsoft/rad-dino", hf_revision="c3736a62544137a0450cc4fa02c9e37e55f28e32",
                        hf_filename="model.safetensors"),
        license="MIT",
        input_size=518,  # its preprocessor: shortest edge 518 (bicubic), centre crop 518
        resize=518,
        interpolation="bicubic",
        mean=(0.5307, 0.5307, 0.5307),
        std=(0.2583, 0.2583, 0.2583),
        strip_prefixes=(),
        drop_prefixes=("embeddings.mask_token",),
        filter_fn=hf_dinov2_to_timm,
        config_file="config.json",
        config_fields=_HF_DINOV2_CONFIG,
    ),
    WeightSource(
        name="biomedclip",
        architecture="vit_base_patch16_224",
        filenames=("open_clip_pytorch_model.bin",),
        origin=_HF + "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 (open_clip_pytorch_model.bin, "
        "open_clip layout; image tower only)",
        description="BiomedCLIP image tower: ViT-B/16 trained on PMC-15M figure-caption pairs, CLS token, 224 px",
        citation="Zhang S, Xu Y, Usuyama N, et al. A Multimodal Biomedical Foundation Model Trained from "
        "Fifteen Million Image-Text Pairs. NEJM AI 2025.",
        fetch=FetchSpec(hf_hub_id="microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
                        hf_revision="2584124ff32fcf3f2946e901aff906086e2d39bf",
                        hf_filename="open_clip_pytorch_model.bin"),
        license="MIT",
        input_size=224,
        resize=224,
        interpolation="bicubic",
        mean=CLIP_MEAN,
        std=CLIP_STD,
        strip_prefixes=("visual.trunk.",),  # open_clip's TimmModel: the timm ViT is `trunk`
        # visual.head.proj: the 768 -> 512 image-text projection; text.*: the PubMedBERT text tower
        drop_prefixes=("visual.head.", "text.", "logit_scale", "logit_bias"),
    ),
    WeightSource(
        name="chexzero",
        architecture="vit_base_patch32_clip_224",
        filenames=("best_64_5e-05_original_22000_0.864.pt",),
        origin="CheXzero checkpoints, Google Drive folder linked from github.com/rajpurkarlab/CheXzero (README, "
        "'model checkpoints'); OpenAI CLIP ViT-B/32 state dict",
        description="CheXzero: OpenAI CLIP ViT-B/32 image tower trained on MIMIC-CXR reports, CLS token, 224 px",
        citation="Tiu E, Talius E, Patel P, Langlotz CP, Ng AY, Rajpurkar P. Expert-level detection of "
        "pathologies from unannotated chest X-ray images via self-supervised learning. Nat Biomed Eng 2022.",
        fetch=FetchSpec(manual="The CheXzero checkpoints are shared on a Google Drive folder linked from "
                        "https://github.com/rajpurkarlab/CheXzero (README, 'Checkpoints'); download "
                        "best_64_5e-05_original_22000_0.864.pt from it after reading the terms."),
        license="MIT (code); MIMIC-CXR DUA",
        license_restricted=True,
        input_size=224,
        resize=224,
        interpolation="bicubic",
        mean=(101.48761 / 255,) * 3,  # CheXzero's Normalize on 0-255 images: 101.48761 / 83.43944
        std=(83.43944 / 255,) * 3,
        strip_prefixes=(),
        drop_prefixes=(*_CLIP_TEXT, "visual.proj"),
        filter_fn=openai_clip_to_timm,
    ),
    WeightSource(
        name="medsiglip",
        architecture="vit_so400m_patch14_siglip_448",
        filenames=("model.safetensors",),
        origin=_HF + "google/medsiglip-448 (model.safetensors with config.json, transformers SiglipModel; "
        "gated: accept the HAI-DEF terms on the hub)",
        description="MedSigLIP-448 image tower: SigLIP So400m/14 trained on medical images, attention pool, 448 px",
        citation="Sellergren A, Kazemzadeh S, Jaroensri T, et al. MedGemma Technical Report. arXiv:2507.05201, 2025.",
        fetch=FetchSpec(manual="google/medsiglip-448 is a gated Hugging Face repository: accept the Health AI "
                        "Developer Foundations terms on its page, then `huggingface-cli download google/medsiglip-448 "
                        "model.safetensors config.json` (cxrkit pins no revision of it yet)."),
        license="HAI-DEF terms",
        license_restricted=True,
        input_size=448,  # SiglipImageProcessor: resize to 448 x 448 (bilinear), no crop
        resize=448,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        strip_prefixes=("vision_model.",),
        drop_prefixes=("text_model.", "logit_scale", "logit_bias"),
        filter_fn=hf_siglip_to_timm,
        config_file="config.json",
        config_fields=tuple((f"vision_config.{k}", v) for k, v in _HF_DINOV2_CONFIG),
    ),
    WeightSource(
        name="imagenet_vit",
        architecture="vit_base_patch16_224",
        filenames=("model.safetensors",),
        origin=_HF + "timm/vit_base_patch16_224.augreg2_in21k_ft_in1k (model.safetensors, timm layout)",
        description="ImageNet ViT-B/16 (timm augreg2: ImageNet-21k, fine-tuned on 1k), CLS token, 224 px",
        citation="Steiner A, Kolesnikov A, Zhai X, et al. How to train your ViT? Data, Augmentation, and "
        "Regularization in Vision Transformers. TMLR 2022.",
        fetch=FetchSpec(manual="`huggingface-cli download timm/vit_base_patch16_224.augreg2_in21k_ft_in1k "
                        "model.safetensors` (timm's ImageNet ViT-B/16; cxrkit pins no revision of it yet)."),
        license="Apache-2.0",
        input_size=224,
        resize=248,  # timm's crop_pct 0.9
        interpolation="bicubic",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        strip_prefixes=("module.",),
        drop_prefixes=("head.",),  # the 1000-class classifier
    ),
)

for _source in FOUNDATION_SOURCES:
    weights.register(_source.name, _source, origin=f"cxrkit.weights.foundation:{_source.name}")
