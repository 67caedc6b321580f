"""OTI feature functions: pseudo-token embeddings (batch, R, width) -> text features (batch, dim).

The reference runs the whole context every call, as ``encode_text`` would. The fast paths
compute the same function with less work (Radford et al., 2021, "Learning Transferable Visual Models From
Natural Language Supervision": a causal text tower pooled at the EOT token):
  * causal towers: only positions up to the pooled (EOT) one matter, and the template prefix
    before the first placeholder never sees the pseudo-tokens, so its per-layer keys/values
    are computed once and every step runs just the placeholders..EOT rows;
  * bidirectional towers (SigLIP): every position is recomputed, but the constant token and
    positional embeddings are added once, and the last block computes only the pooled row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from open_clip.transformer import text_global_pool

from crossgap_index.errors import IncompatibleModelError, QueryError
from crossgap_index.models.attention import KeyValue, aligned_mask, block_forward, decomposable
from crossgap_index.models.family import FeatureFn, TextTower

PLACEHOLDERS = ("*", "#")  # two single-token words; the positions where their tokenizations differ


@dataclass(frozen=True)
class Prompt:
    """The tokenized template: where the R placeholders sit and which position the model pools."""

    ids: torch.Tensor  # (1, context_length), on the model's device
    start: int  # first placeholder position
    n_tokens: int
    pool: int  # position the model's pooling reads

    @property
    def stop(self) -> int:
        return self.start + self.n_tokens


def tokenize_prompt(
    tokenizer: Callable, template: str, n_tokens: int, tower: TextTower, name: str, device: torch.device
) -> Prompt:
    """Tokenize ``template`` once with R placeholder words and locate them."""
    filled = [template.format(" ".join([word] * n_tokens)) for word in PLACEHOLDERS]
    ids = tokenizer([*filled, PLACEHOLDERS[0]])
    if ids.shape[1] > tower.positional_embedding.shape[0]:
        raise IncompatibleModelError(
            f"OTI is not possible with {name}: its tokenizer gives {ids.shape[1]} tokens, "
            f"its text tower takes {tower.positional_embedding.shape[0]}"
        )
    first, second, bare = ids[0], ids[1], ids[2]
    where = torch.nonzero(first != second).flatten().tolist()
    start = where[0] if where else 0
    separate = (
        where == list(range(start, start + n_tokens))
        and bool((first[where] == first[start]).all())
        and bool((bare == first[start]).any())
    )
    if not separate:
        raise QueryError(
            f"the template {template!r} does not keep the {n_tokens} placeholder(s) as separate tokens "
            f"for {name}'s tokenizer; put spaces around '{{}}'"
        )
    pool = _pool_position(first, tower)
    if tower.attn_mask is not None and pool < start:
        raise IncompatibleModelError(
            f"OTI is not possible with {name}: under its causal mask the pooled position {pool} "
            f"comes before the placeholder at {start}"
        )
    return Prompt(first.unsqueeze(0).to(device), start, n_tokens, pool)


def reference_text_features(tower: TextTower, prompt: Prompt) -> FeatureFn:
    """The oracle: the full context through the tower, as ``encode_text`` runs it."""

    def features(tokens: torch.Tensor) -> torch.Tensor:
        cast = tower.transformer.get_cast_dtype()
        ids = prompt.ids.expand(tokens.shape[0], -1)
        x = tower.token_embedding(ids).to(cast)
        x = torch.cat([x[:, : prompt.start], tokens.to(cast), x[:, prompt.stop :]], dim=1)
        x = x + tower.positional_embedding[: x.shape[1]].to(cast)
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        x = tower.ln_final(x)
        return tower.project(text_global_pool(x, ids, tower.pool_type, eos_token_id=tower.eos_id))

    return features


def fast_text_features(tower: TextTower, prompt: Prompt) -> FeatureFn:
    """The same function as the reference, with the exact shortcuts of the module docstring.

    Builds its caches now, in the tower's own dtype (the precision the steps run in).
    """
    if not decomposable(tower.transformer):
        return reference_text_features(tower, prompt)
    if tower.attn_mask is not None:
        return _CausalText(tower, prompt)
    return _BidirectionalText(tower, prompt)


class _CausalText:
    """Rows start..pool only, attending to the prefix keys/values computed once."""

    def __init__(self, tower: TextTower, prompt: Prompt):
        self.tower, self.prompt = tower, prompt
        cast = tower.transformer.get_cast_dtype()
        end = prompt.pool + 1
        with torch.no_grad():
            positions = tower.positional_embedding[:end].to(cast)
            embedded = tower.token_embedding(prompt.ids[0, :end]).to(cast) + positions
            self.placeholder_positions = positions[prompt.start : prompt.stop].detach()
            self.tail = embedded[prompt.stop :].detach()
            mask = tower.attn_mask[:end, :end]
            self.mask = aligned_mask(mask[prompt.start :], embedded)  # aligned once, not per step
            self.last_mask = aligned_mask(mask[end - 1 :], embedded)
            self.cache: list[KeyValue | None] = [None] * len(tower.transformer.resblocks)
            if prompt.start > 0:
                x = embedded[: prompt.start].unsqueeze(0)
                for i, block in enumerate(tower.transformer.resblocks):
                    x, self.cache[i] = block_forward(block, x, mask[: prompt.start, : prompt.start])

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        blocks = self.tower.transformer.resblocks
        x = tokens.to(self.tail.dtype) + self.placeholder_positions
        x = torch.cat([x, self.tail.expand(x.shape[0], -1, -1)], dim=1)
        for block, past in zip(blocks[:-1], self.cache[:-1], strict=True):
            x, _ = block_forward(block, x, self.mask, past)
        x, _ = block_forward(blocks[-1], x, self.last_mask, self.cache[-1], rows=slice(-1, None))
        return self.tower.project(self.tower.ln_final(x[:, 0]))


class _BidirectionalText:
    """Every position recomputed; constant embeddings added once; last block on the pooled row only."""

    def __init__(self, tower: TextTower, prompt: Prompt):
        self.tower, self.prompt = tower, prompt
        cast = tower.transformer.get_cast_dtype()
        with torch.no_grad():
            positions = tower.positional_embedding[: prompt.ids.shape[1]].to(cast)
            embedded = tower.token_embedding(prompt.ids[0]).to(cast) + positions
            self.placeholder_positions = positions[prompt.start : prompt.stop].detach()
            self.before = embedded[: prompt.start].detach()
            self.after = embedded[prompt.stop :].detach()

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        batch = tokens.shape[0]
        blocks = self.tower.transformer.resblocks
        middle = tokens.to(self.before.dtype) + self.placeholder_positions
        x = torch.cat([self.before.expand(batch, -1, -1), middle, self.after.expand(batch, -1, -1)], dim=1)
        for block in blocks[:-1]:  # op by op: nn.MultiheadAttention's autograd path copies its weights per row
            x, _ = block_forward(block, x, None)
        pool = self.prompt.pool
        x, _ = block_forward(blocks[-1], x, None, rows=slice(pool, pool + 1))
        return self.tower.project(self.tower.ln_final(x[:, 0]))


def _pool_position(ids: torch.Tensor, tower: TextTower) -> int:
    """The index ``text_global_pool`` reads for this token row."""
    if tower.pool_type == "argmax":
        return int(ids.argmax())
    if tower.pool_type == "eos":
        return int((ids == tower.eos_id).int().argmax())
    return 0 if tower.pool_type == "first" else ids.shape[0] - 1


def text_features_op_by_op(tower: TextTower, ids: torch.Tensor) -> torch.Tensor:
    """``encode_text`` (unnormalised) on token ids with every block op by op: the same function, computed
    through F.linear and fused attention instead of nn.MultiheadAttention's float-mask path, which
    loses most of its time copying weights (2-3x slower than this in fp32, worse in bf16). Causal towers
    stop at the last pooled position of the batch: later rows never reach an earlier one."""
    if tower.attn_mask is not None and tower.pool_type in ("argmax", "eos"):
        pooled = ids.argmax(dim=1) if tower.pool_type == "argmax" else (ids == tower.eos_id).int().argmax(dim=1)
        ids = ids[:, : int(pooled.max()) + 1]
    cast = tower.transformer.get_cast_dtype()
    length = ids.shape[1]
    x = tower.token_embedding(ids).to(cast) + tower.positional_embedding[:length].to(cast)
    mask = None if tower.attn_mask is None else tower.attn_mask[:length, :length]
    for block in tower.transformer.resblocks:
        x, _ = block_forward(block, x, mask)
    x = tower.ln_final(x)
    return tower.project(text_global_pool(x, ids, tower.pool_type, eos_token_id=tower.eos_id))
