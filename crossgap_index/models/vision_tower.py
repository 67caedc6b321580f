"""OVI feature functions: pseudo-patches (batch, P, width) -> image features (batch, dim).

The P pseudo-patches stand in for the patch embedding's output: repeated nearest-neighbour
along the patch sequence to fill the grid, then the class token and the model's own
positional embedding, and the rest of the tower unchanged. A ViT tower is bidirectional, so
every token is recomputed on every step; the fast path only adds the constant class and
positional rows once and, for class-token pooling, runs the last block on that row alone.
"""

from __future__ import annotations

import torch
from open_clip.transformer import _expand_token

from crossgap_index.models.attention import block_forward, decomposable
from crossgap_index.models.family import TIMM_VIT, FeatureFn, VisionTower


def fill_index(n_patches: int, n_grid: int, device: torch.device) -> torch.Tensor:
    """Which pseudo-patch fills each grid position: nearest-neighbour along the sequence."""
    return torch.div(torch.arange(n_grid, device=device) * n_patches, n_grid, rounding_mode="floor")


def reference_image_features(tower: VisionTower, index: torch.Tensor) -> FeatureFn:
    """The oracle: the tower's own forward with the patch embedding's output replaced."""
    if tower.kind == TIMM_VIT:
        return _timm_features(tower, index)
    visual = tower.module

    def features(patches: torch.Tensor) -> torch.Tensor:
        x = patches[:, index]
        x = torch.cat([_expand_token(visual.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
        x = x + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(visual.patch_dropout(x))
        x = visual.transformer(x)
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    return features


def fast_image_features(tower: VisionTower, index: torch.Tensor) -> FeatureFn:
    """The reference's function with constant rows precomputed and a class-row-only last block."""
    visual = tower.module
    if tower.kind == TIMM_VIT or not decomposable(visual.transformer):
        return reference_image_features(tower, index)
    with torch.no_grad():
        positions = visual.positional_embedding.detach()
        class_row = (visual.class_embedding + positions[0]).view(1, 1, -1)
        patch_positions = positions[1:]
    class_only = visual.attn_pool is None and visual.pool_type == "tok"
    blocks = visual.transformer.resblocks

    def features(patches: torch.Tensor) -> torch.Tensor:
        x = patches.to(positions.dtype)[:, index] + patch_positions
        x = torch.cat([class_row.expand(x.shape[0], -1, -1), x], dim=1)
        x = visual.ln_pre(visual.patch_dropout(x))
        for block in blocks[:-1] if class_only else blocks:  # op by op, as in the text fast path
            x, _ = block_forward(block, x, None)
        if class_only:
            x, _ = block_forward(blocks[-1], x, None, rows=slice(0, 1))
        pooled, _ = visual._pool(x)
        return pooled @ visual.proj if visual.proj is not None else pooled

    return features


def _timm_features(tower: VisionTower, index: torch.Tensor) -> FeatureFn:
    """timm ViT (SigLIP's image tower): the trunk's forward_features after patch_embed, then its head."""
    visual = tower.module
    trunk = visual.trunk

    def features(patches: torch.Tensor) -> torch.Tensor:
        x = patches[:, index]
        if trunk.dynamic_img_size:
            x = x.unflatten(1, tower.grid)
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(x)))
        x = trunk.norm(trunk.blocks(x))
        return visual.head(trunk.forward_head(x))

    return features
