"""Filter functions: foreign Vision Transformer layouts to timm's keys (timm's ``checkpoint_filter_fn`` spirit).

Each function receives a state dict after a weight source's declarative steps
(container, prefixes, dropped heads and text towers) and returns timm
``VisionTransformer`` keys. They only rename, reshape, fuse or split tensors:
every tensor they receive ends up in the output (or inside a fused tensor), so
the verification that follows accounts for every tensor of the file. A tensor a
function does not know keeps its name and is then reported as unexpected; when
one of the three query/key/value tensors of a block is missing, the other two
keep their names too, so the error names what is there.

* :func:`dinov2_to_timm`: facebookresearch/dinov2 files (``dinov2_vitb14_pretrain.pth``), with or without registers;
* :func:`hf_dinov2_to_timm`: transformers ``Dinov2Model`` (RAD-DINO's ``model.safetensors``);
* :func:`openai_clip_to_timm`: OpenAI CLIP's image tower (``visual.*``; CheXzero);
* :func:`hf_siglip_to_timm`: transformers ``SiglipVisionModel`` (MedSigLIP, ``vision_model.*`` stripped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

__all__ = ["dinov2_to_timm", "hf_dinov2_to_timm", "openai_clip_to_timm", "hf_siglip_to_timm"]

State = Mapping[str, torch.Tensor]


def _fuse_qkv(out: dict[str, torch.Tensor], parts: dict[str, dict[str, torch.Tensor]], names: tuple[str, str, str],
              original: dict[str, str]) -> None:
    """Concatenate query, key and value tensors into timm's ``qkv``; incomplete triples keep their names."""
    for target, group in parts.items():
        if all(n in group for n in names):
            out[target] = torch.cat([group[n] for n in names], dim=0)
        else:
            for n, value in group.items():
                out[original[f"{target}|{n}"]] = value


def dinov2_to_timm(state: State) -> dict[str, torch.Tensor]:
    """facebookresearch/dinov2 keys are timm's already; registers move out of the position embedding.

    As timm's ``_convert_dinov2``: ``register_tokens`` becomes ``reg_token``, and because timm's
    register models add the position embedding to the patches only (``no_embed_class``), the class
    token's position is folded into ``cls_token`` and dropped from ``pos_embed``. SwiGLU MLP names
    (``w12``/``w3``, ViT-g only) become ``fc1``/``fc2``.
    """
    out = dict(state)
    if "register_tokens" in out:
        out["reg_token"] = out.pop("register_tokens")
        if "cls_token" in out and "pos_embed" in out:
            pos = out.pop("pos_embed")
            out["cls_token"] = out["cls_token"] + pos[:, :1]
            out["pos_embed"] = pos[:, 1:]
    renamed = {}
    for key, value in out.items():
        key = re.sub(r"^(blocks\.\d+\.mlp)\.w12\.", r"\1.fc1.", key)
        key = re.sub(r"^(blocks\.\d+\.mlp)\.w3\.", r"\1.fc2.", key)
        renamed[key] = value
    return renamed


_HF_DINOV2 = (
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1$", r"blocks.\1.ls\2.gamma"),
    (r"^encoder\.layer\.(\d+)\.(norm[12]|mlp\.fc[12])\.", r"blocks.\1.\2."),
    (r"^layernorm\.", "norm."),
)
_HF_DINOV2_QKV = re.compile(r"^encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)$")


def hf_dinov2_to_timm(state: State) -> dict[str, torch.Tensor]:
    """transformers ``Dinov2Model`` keys to timm's (separate query/key/value fused into ``qkv``)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        match = _HF_DINOV2_QKV.match(key)
        if match:
            target = f"blocks.{match.group(1)}.attn.qkv.{match.group(3)}"
            parts.setdefault(target, {})[match.group(2)] = value
            original[f"{target}|{match.group(2)}"] = key
            continue
        new = key
        for pattern, repl in _HF_DINOV2:
            new = re.sub(pattern, repl, new)
        out[new] = value
    _fuse_qkv(out, parts, ("query", "key", "value"), original)
    return out


_CLIP = (
    (r"^visual\.conv1\.", "patch_embed.proj."),
    (r"^visual\.ln_pre\.", "norm_pre."),
    (r"^visual\.ln_post\.", "norm."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.ln_([12])\.", r"blocks.\1.norm\2."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.", r"blocks.\1.mlp.fc1."),
    (r"^visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.", r"blocks.\1.mlp.fc2."),
)


def openai_clip_to_timm(state: State) -> dict[str, torch.Tensor]:
    """OpenAI CLIP image-tower keys (``visual.*``) to timm's, as timm's ``_convert_openai_clip``.

    ``class_embedding`` (D) becomes ``cls_token`` (1, 1, D) and ``positional_embedding`` (N, D)
    becomes ``pos_embed`` (1, N, D). The image-text projection ``visual.proj`` is not part of
    the encoder: the weight source drops it by name before this function runs.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "visual.class_embedding" and value.dim() == 1:
            out["cls_token"] = value.reshape(1, 1, -1)
            continue
        if key == "visual.positional_embedding" and value.dim() == 2:
            out["pos_embed"] = value.unsqueeze(0)
            continue
        new = key
        for pattern, repl in _CLIP:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


_SIGLIP = (
    (r"^embeddings\.patch_embedding\.", "patch_embed.proj."),
    (r"^encoder\.layers\.(\d+)\.self_attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.", r"blocks.\1.norm\2."),
    (r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^post_layernorm\.", "norm."),
    (r"^head\.attention\.out_proj\.", "attn_pool.proj."),
    (r"^head\.layernorm\.", "attn_pool.norm."),
    (r"^head\.mlp\.(fc[12])\.", r"attn_pool.mlp.\1."),
)
_SIGLIP_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def hf_siglip_to_timm(state: State) -> dict[str, torch.Tensor]:
    """transformers ``SiglipVisionModel`` keys (``vision_model.`` stripped) to timm's.

    The position embedding (an ``nn.Embedding`` of N x D) becomes ``pos_embed`` (1, N, D); the
    attention-pooling head's probe becomes ``attn_pool.latent`` and its ``nn.MultiheadAttention``
    input projection is split into timm's ``q`` (first D rows) and ``kv`` (the other 2D rows).
    """
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    original: dict[str, str] = {}
    for key, value in state.items():
        match = _SIGLIP_QKV.match(key)
        if match:
            target = f"blocks.{match.group(1)}.attn.qkv.{match.group(3)}"
            parts.setdefault(target, {})[match.group(2)] = value
            original[f"{target}|{match.group(2)}"] = key
            continue
        if key == "embeddings.position_embedding.weight" and value.dim() == 2:
            out["pos_embed"] = value.unsqueeze(0)
            continue
        if key == "head.probe":
            out["attn_pool.latent"] = value
            continue
        in_proj = re.match(r"^head\.attention\.in_proj_(weight|bias)$", key)
        if in_proj and value.shape[0] % 3 == 0:
            dim = value.shape[0] // 3
            out[f"attn_pool.q.{in_proj.group(1)}"] = value[:dim]
            out[f"attn_pool.kv.{in_proj.group(1)}"] = value[dim:]
            continue
        new = key
        for pattern, repl in _SIGLIP:
            new = re.sub(pattern, repl, new)
        out[new] = value
    _fuse_qkv(out, parts, ("q", "k", "v"), original)
    return out
