"""Which towers of a model can be inverted, found by looking at the model itself.

OTI splices pseudo-token embeddings into an open_clip ``TextTransformer``-style text tower
(``CLIP`` keeps those modules on the model, ``CustomTextCLIP`` under ``.text``). OVI replaces
the patch embedding of a ViT image tower (open_clip ``VisionTransformer`` or a timm
``VisionTransformer`` inside open_clip's ``TimmModel``). Anything else cannot be inverted
and says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from open_clip.model import CLIP, CustomTextCLIP
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from open_clip.transformer import TextTransformer, VisionTransformer
from torch import nn

from crossgap_index.errors import IncompatibleModelError

CAUSAL = "causal"
BIDIRECTIONAL = "bidirectional"
OPEN_CLIP_VIT = "open_clip-vit"
TIMM_VIT = "timm-vit"
POOLS = ("argmax", "eos", "last", "first")

# What inversion optimises through: pseudo-tokens or pseudo-patches (batch, n, width) -> features (batch, dim).
FeatureFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """What a model allows: ``text`` / ``vision`` name the tower kind, or are None with the reason."""

    text: str | None  # "causal" | "bidirectional" | None
    vision: str | None  # "open_clip-vit" | "timm-vit" | None
    text_problem: str | None = None
    vision_problem: str | None = None


@dataclass(frozen=True)
class TextTower:
    """The text-tower pieces OTI runs, wherever the model keeps them."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    projection: torch.Tensor | nn.Module | None
    pool_type: str
    eos_id: int | None
    attn_mask: torch.Tensor | None  # the causal additive mask, None when bidirectional

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Apply the text projection exactly as open_clip does (matrix, Linear with bias, or none)."""
        if self.projection is None:
            return pooled
        if isinstance(self.projection, nn.Module):
            return self.projection(pooled)
        return pooled @ self.projection


@dataclass(frozen=True)
class VisionTower:
    """The ViT image tower OVI runs, its kind, and the patch grid the pseudo-patches fill."""

    kind: str  # OPEN_CLIP_VIT | TIMM_VIT
    module: nn.Module  # model.visual
    width: int  # patch-embedding width
    n_grid: int  # number of patch tokens
    grid: tuple[int, int]
    patch_size: tuple[int, int]

    @property
    def default_patches(self) -> int:
        """P from the paper: 1 for patch-32 ViTs, 4 otherwise."""
        return 1 if self.patch_size == (32, 32) else 4


def detect_family(model: nn.Module) -> Family:
    """Report which inversions ``model`` supports, without raising."""
    text, text_problem = _text_kind(model)
    vision, vision_problem = _vision_kind(model)
    return Family(text, vision, text_problem, vision_problem)


def text_tower(model: nn.Module, name: str) -> TextTower:
    """The text tower of ``model`` for OTI; IncompatibleModelError names ``name`` and the reason."""
    kind, problem = _text_kind(model)
    if kind is None:
        raise IncompatibleModelError(f"OTI is not possible with {name}: {problem}")
    if isinstance(model, CLIP):
        return TextTower(
            model.token_embedding,
            model.positional_embedding,
            model.transformer,
            model.ln_final,
            model.text_projection,
            model.text_pool_type,
            getattr(model, "text_eos_id", None),
            model.attn_mask,
        )
    text = model.text
    return TextTower(
        text.token_embedding,
        text.positional_embedding,
        text.transformer,
        text.ln_final,
        text.text_projection,
        text.pool_type,
        text.eos_id,
        text.attn_mask,
    )


def vision_tower(model: nn.Module, name: str) -> VisionTower:
    """The ViT image tower of ``model`` for OVI; IncompatibleModelError names ``name`` and the reason."""
    kind, problem = _vision_kind(model)
    if kind is None:
        raise IncompatibleModelError(f"OVI is not possible with {name}: {problem}")
    visual = model.visual
    if kind == OPEN_CLIP_VIT:
        grid = tuple(visual.grid_size)
        return VisionTower(kind, visual, visual.conv1.out_channels, grid[0] * grid[1], grid, tuple(visual.patch_size))
    embed = visual.trunk.patch_embed
    grid = tuple(embed.grid_size)
    return VisionTower(kind, visual, visual.trunk.embed_dim, grid[0] * grid[1], grid, tuple(embed.patch_size))


def _text_kind(model: nn.Module) -> tuple[str | None, str | None]:
    if isinstance(model, CLIP):
        pool, mask = model.text_pool_type, model.attn_mask
    elif isinstance(model, CustomTextCLIP):
        text = model.text
        if not isinstance(text, TextTransformer):
            return None, f"its text tower ({type(text).__name__}) does not take spliced token embeddings"
        if text.cls_emb is not None or text.use_pad_mask:
            return None, "text towers with an appended class token or a padding mask are not supported"
        pool, mask = text.pool_type, text.attn_mask
    else:
        return None, f"{type(model).__name__} is neither an open_clip CLIP nor a CustomTextCLIP"
    if pool not in POOLS:
        return None, f"its text tower pools with '{pool}', which gives no single text feature"
    if mask is None:
        return BIDIRECTIONAL, None
    causal = torch.triu(torch.ones(mask.shape, dtype=torch.bool, device=mask.device), 1)
    if not torch.equal(torch.isinf(mask), causal):
        return None, "its text attention mask is neither causal nor absent"
    return CAUSAL, None


def _vision_kind(model: nn.Module) -> tuple[str | None, str | None]:
    visual = getattr(model, "visual", None)
    if isinstance(visual, VisionTransformer):
        return OPEN_CLIP_VIT, None
    if isinstance(visual, TimmModel):
        from timm.models.vision_transformer import VisionTransformer as TimmViT

        if isinstance(visual.trunk, TimmViT):
            return TIMM_VIT, None
        return None, f"its timm image tower is a {type(visual.trunk).__name__}; OVI needs a ViT"
    if isinstance(visual, ModifiedResNet):
        return None, "its image tower is a ResNet (ModifiedResNet); OVI needs a ViT"
    return None, f"its image tower is a {type(visual).__name__}; OVI needs a ViT"
