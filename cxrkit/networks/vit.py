"""Vision Transformer backbones, built with timm.

:class:`ViTBackbone` is timm's :class:`~timm.models.vision_transformer.VisionTransformer`
with its classifier removed, so its state-dict keys are exactly timm's
(``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ``pos_embed`` ...) and
a weight source's filter function maps a foreign file to those keys, as timm's
``checkpoint_filter_fn`` does. Its forward pass returns one pooled vector per
image: the class token (``pool="token"``, default), the mean of the patch tokens
(``pool="mean"``, register and class tokens left out), or the attention-pool
(``pool="map"``: SigLIP's multi-head attention pooling head), always after the
final norm.

The network is built for the run's ``image_size``: the position-embedding grid is
``image_size / patch_size`` on each side. A file whose grid differs is resampled
when loaded (bicubic, with antialiasing, by timm's ``resample_abs_pos_embed``;
see :mod:`cxrkit.weights.load`). An image size the patch size does not divide is
refused with an error naming both numbers.

Stages for ``freeze_until``: ``patch_embed`` (with the class/register tokens and the
position embedding), ``blocks.0`` ... ``blocks.N-1``, ``norm`` (and ``attn_pool``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.utils.checkpoint
from timm.layers import get_act_layer
from timm.models.vision_transformer import VisionTransformer

from cxrkit.registry import backbones

__all__ = ["ViTBackbone", "ViTConfig", "TokenGrid", "VIT_CONFIGS", "check_image_size", "POOLS"]

#: pooling of the final tokens into one feature vector.
POOLS = ("token", "mean", "map")


@dataclass(frozen=True)
class ViTConfig:
    """One ViT architecture (the arguments of timm's ``VisionTransformer``).

    Attributes:
        title: human name, e.g. ``"ViT-B/14 (DINOv2)"``.
        patch_size: side of a patch in pixels (14, 16 or 32).
        embed_dim: token width (the feature width).
        depth: transformer blocks.
        num_heads: attention heads.
        native_size: image side the published weights were trained at.
        mlp_ratio: MLP hidden width / ``embed_dim``.
        init_values: layer-scale initial value (``None``: no layer scale).
        class_token: a class token is prepended.
        reg_tokens: register tokens (DINOv2 with registers: 4).
        no_embed_class: the position embedding covers the patches only (DINOv2 with registers, SigLIP).
        pre_norm: a layer norm before the blocks (CLIP: ``ln_pre``).
        norm_eps: layer-norm epsilon.
        act: MLP activation (``gelu``, ``gelu_tanh``, ``quick_gelu``).
        pool: default pooling (``token``, ``mean`` or ``map``).
    """

    title: str
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    native_size: int
    mlp_ratio: float = 4.0
    init_values: float | None = None
    class_token: bool = True
    reg_tokens: int = 0
    no_embed_class: bool = False
    pre_norm: bool = False
    norm_eps: float = 1e-6
    act: str = "gelu"
    pool: str = "token"

    def describe(self) -> str:
        """One line for ``cxrkit list backbones``: features, native and accepted input sizes."""
        return (f"{self.title} (timm VisionTransformer): {self.embed_dim} features, native "
                f"{self.native_size} px, accepts any multiple of {self.patch_size} px (position embedding "
                "resampled bicubically)")


def check_image_size(image_size: int, patch_size: int, name: str) -> int:
    """``image_size`` if ``patch_size`` divides it, else a ``ValueError`` naming both numbers."""
    size = int(image_size)
    if size < patch_size or size % patch_size:
        lower = max(patch_size, size // patch_size * patch_size)
        raise ValueError(
            f"image size {size} px does not fit backbone {name}: its patch size is {patch_size} px, so the image "
            f"size must be a multiple of {patch_size} (e.g. {lower} or {lower + patch_size})")
    return size


class TokenGrid(nn.Module):
    """The patch tokens of ``(B, N, C)`` tokens as a ``(B, C, H, W)`` grid; :meth:`merge` puts them back.

    No weights. Between the two the values are unchanged, so inserting the pair changes nothing but
    gives Grad-CAM a spatial activation to hook on a Vision Transformer.

    Args:
        prefix: leading non-patch tokens (class and register tokens).
        side: patches per side.
    """

    def __init__(self, prefix: int, side: int) -> None:
        super().__init__()
        self.prefix = int(prefix)
        self.side = int(side)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class docstring
        patches = tokens[:, self.prefix:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], self.side, self.side)

    def merge(self, tokens: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """``tokens`` with their patch tokens replaced by ``grid`` (flattened back)."""
        return torch.cat([tokens[:, : self.prefix], grid.flatten(2).transpose(1, 2)], dim=1)


class ViTBackbone(VisionTransformer):
    """timm's VisionTransformer returning pooled features (no classifier).

    Args:
        config: the architecture.
        name: registry name (for messages).
        in_channels: input channels (1 or 3).
        image_size: input side in pixels (default: ``config.native_size``); a multiple of the patch size.
        pool: ``token``, ``mean`` or ``map`` (default: the config's).
        drop_path_rate: stochastic depth for fine-tuning.
        grad_checkpointing: recompute the blocks' activations in the backward pass (less memory).

    Attributes:
        num_features: feature width.
        stages: names for ``freeze_until``.
        patch_size: patch side in pixels.
        image_size: the input side the position embedding is built for.
        pos_embed_prefix: tokens of ``pos_embed`` that are not patches (class token unless ``no_embed_class``).

    Raises:
        ValueError: an image size the patch size does not divide, or an unknown pooling.
    """

    def __init__(self, config: ViTConfig, name: str, in_channels: int = 3, image_size: int | None = None,
                 pool: str | None = None, drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> None:
        size = check_image_size(image_size or config.native_size, config.patch_size, name)
        pool = pool or config.pool
        if pool not in POOLS:
            raise ValueError(f"unknown ViT pooling {pool!r}; choose one of: {', '.join(POOLS)}")
        if pool == "map" and config.pool != "map":
            raise ValueError(f"backbone {name} has no attention-pool head; choose pool token or mean")
        super().__init__(
            img_size=size, patch_size=config.patch_size, in_chans=int(in_channels), num_classes=0,
            global_pool="map" if config.pool == "map" else "token", embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            init_values=config.init_values, class_token=config.class_token, reg_tokens=config.reg_tokens,
            no_embed_class=config.no_embed_class, pre_norm=config.pre_norm,
            norm_layer=partial(nn.LayerNorm, eps=config.norm_eps), act_layer=get_act_layer(config.act),
            drop_path_rate=float(drop_path_rate),
        )
        self.config = config
        self.pool_mode = pool
        self.patch_size = config.patch_size
        self.image_size = size
        self.pos_embed_prefix = 0 if config.no_embed_class else self.num_prefix_tokens
        self.stages = ("patch_embed", *(f"blocks.{i}" for i in range(config.depth)), "norm") + (
            ("attn_pool",) if config.pool == "map" else ())
        self.cam_grid = TokenGrid(self.num_prefix_tokens, size // config.patch_size)
        self.cam_layer = "cam_grid"  # what Grad-CAM hooks (cxrkit.serve.gradcam)
        if grad_checkpointing:
            self.set_grad_checkpointing(True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``forward_features``, with the last block's input passed through :attr:`cam_grid`.

        The patch tokens entering the last block are viewed as a ``(B, C, H, W)`` grid by
        :class:`TokenGrid` (no weights; the values are unchanged), so Grad-CAM can hook that grid:
        the pooled output (class token, mean or attention pool) depends on those tokens through the
        last block's attention.
        """
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            if i == last:
                x = self.cam_grid.merge(x, self.cam_grid(x))
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102 - see the class docstring
        tokens = self.forward_features(x)
        if self.pool_mode == "mean":
            return tokens[:, self.num_prefix_tokens:].mean(dim=1)
        if self.pool_mode == "map":
            return self.attn_pool(tokens)
        return tokens[:, 0]

    def token_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` tokens as the ``(B, C, H, W)`` map of their patch tokens."""
        return self.cam_grid(tokens)


#: registry name -> architecture. DINOv2 and RAD-DINO share ViT-B/14 with layer scale.
VIT_CONFIGS: dict[str, ViTConfig] = {
    "vit_base_patch14_dinov2": ViTConfig("ViT-B/14 DINOv2 (layer scale)", 14, 768, 12, 12, 518, init_values=1e-5),
    "vit_base_patch14_reg4_dinov2": ViTConfig(
        "ViT-B/14 DINOv2 with 4 registers", 14, 768, 12, 12, 518, init_values=1e-5, reg_tokens=4,
        no_embed_class=True),
    "vit_base_patch16_224": ViTConfig("ViT-B/16", 16, 768, 12, 12, 224),
    "vit_base_patch32_clip_224": ViTConfig(
        "ViT-B/32 CLIP image tower (pre-norm, QuickGELU)", 32, 768, 12, 12, 224, pre_norm=True, norm_eps=1e-5,
        act="quick_gelu"),
    "vit_so400m_patch14_siglip_448": ViTConfig(
        "ViT-So400m/14 SigLIP image tower (attention pooling)", 14, 1152, 27, 16, 448, mlp_ratio=3.7362,
        class_token=False, act="gelu_tanh", pool="map"),
}


def _register(name: str, config: ViTConfig) -> None:
    def factory(in_channels: int = 3, image_size: int | None = None, pool: str | None = None,
                drop_path_rate: float = 0.0, grad_checkpointing: bool = False) -> ViTBackbone:
        return ViTBackbone(config, name, in_channels, image_size, pool, drop_path_rate, grad_checkpointing)

    factory.__name__ = name
    factory.__doc__ = config.describe()
    factory.vit_config = config  # type: ignore[attr-defined]
    backbones.register(name, factory, origin=f"cxrkit.networks.vit:{name}")


for _name, _config in VIT_CONFIGS.items():
    _register(_name, _config)
