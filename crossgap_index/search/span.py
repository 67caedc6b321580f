"""Span projection (Herzog & Wang): compare features inside the subspace that concept names span.

Their zero-query-cost alternative to modality inversion: embed a vocabulary of concept names with
the text tower, centre those text features, keep the top principal directions, then project query
and gallery features onto the span of those directions and re-normalise. The centring only serves
to find the directions; features are projected through the origin, not shifted by the vocabulary's
mean first (on a development set the two differed by under 0.2 mAP). Projected features stay in the
model's d-dimensional space (rank ``n_components``), so they can be stored and searched like any
other unit vectors.

Three settings decide the subspace, each explicit so a published setting can be run exactly:

* ``prompt``: ``raw`` embeds the bare names (the published code), ``photo`` embeds
  "a photo of a/an {name}" (as CLIP is queried);
* ``features``: ``raw`` centres the text tower's output as it comes (the published code), ``unit``
  unit-normalises each name's feature first (as every stored embedding is);
* ``components``: a count (``8``), a fraction of d (``"d/2"``), or a label-free rule on the
  vocabulary's own spectrum, the fewest directions that explain a share of its variance (``"ev:0.9"``).

``PRESETS["published"]`` is the published PCA← (ImageNet names, raw names, raw features, d/2).
"""

from __future__ import annotations

import re

import numpy as np

_RANK_TOL = 1e-6  # singular values below this fraction of the largest are numerical noise

PROMPTS = ("raw", "photo")
FEATURES = ("raw", "unit")
# The settings a span leg's params may carry besides ``kind``; ``preset`` names a row of PRESETS.
SETTINGS = ("vocabulary", "prompt", "features", "components")
PRESETS = {
    # Herzog & Wang's code: the 1000 ImageNet names embedded bare, raw encode_text output centred, d/2 kept.
    "published": {"vocabulary": "imagenet", "prompt": "raw", "features": "raw", "components": "d/2"},
    # The project's own variant: the names in the "a photo of" prompt, unit features, d/16 kept.
    "project-v1": {"vocabulary": "imagenet", "prompt": "photo", "features": "unit", "components": "d/16"},
}
_FRACTION = re.compile(r"d/(\d+)")
_EXPLAINED = re.compile(r"ev:(0?\.\d+|1(\.0*)?)")


def check_components(rule: int | str) -> int | str:
    """``rule`` if it is a positive count, ``"d/N"`` (N >= 1) or ``"ev:P"`` (0 < P <= 1); else ValueError."""
    if isinstance(rule, bool):
        raise ValueError(f"components must be a count, 'd/N' or 'ev:P', got {rule!r}")
    if isinstance(rule, int | np.integer):
        if rule < 1:
            raise ValueError(f"components must be >= 1, got {rule}")
        return int(rule)
    if isinstance(rule, str):
        text = rule.strip()
        if text.isdigit():
            return check_components(int(text))
        fraction = _FRACTION.fullmatch(text)
        if fraction and int(fraction.group(1)) >= 1:
            return text
        explained = _EXPLAINED.fullmatch(text)
        if explained and 0 < float(explained.group(1)) <= 1:
            return text
    raise ValueError(f"components must be a count, 'd/N' (e.g. d/2) or 'ev:P' (e.g. ev:0.9), got {rule!r}")


def resolve_components(rule: int | str, singular: np.ndarray, dim: int) -> int:
    """The number of directions ``rule`` keeps, given the centred vocabulary's singular values."""
    rule = check_components(rule)
    if isinstance(rule, int):
        return rule
    fraction = _FRACTION.fullmatch(rule)
    if fraction:
        return max(1, dim // int(fraction.group(1)))
    share = float(rule.split(":", 1)[1])
    energy = np.asarray(singular, np.float64) ** 2
    cumulative = np.cumsum(energy) / energy.sum()
    return int(np.searchsorted(cumulative, share - 1e-12) + 1)


class SpanProjection:
    """``fit`` on text features of a vocabulary, then ``apply`` to any features of the same dimension."""

    def __init__(self) -> None:
        self.components: np.ndarray | None = None  # (k, d), orthonormal rows
        self.explained: float = float("nan")  # share of the centred vocabulary's variance the kept rows explain

    @property
    def n_components(self) -> int:
        return 0 if self.components is None else int(self.components.shape[0])

    def fit(self, text_features: np.ndarray, n_components: int | str | None = None) -> SpanProjection:
        """Keep the top principal directions of the centred features: ``n_components`` is a count, ``"d/N"``
        or ``"ev:P"`` (default ``"d/2"``, the published setting).

        A vocabulary of n names spans at most n - 1 centred directions; asking for more keeps only
        those (the rest would be arbitrary), so read ``n_components`` after fitting.
        """
        feats = np.asarray(text_features, np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"span projection needs at least 2 text features as an (n, d) array, got {feats.shape}")
        _, singular, vt = np.linalg.svd(feats - feats.mean(axis=0), full_matrices=False)
        rank = int((singular > _RANK_TOL * singular[0]).sum()) if singular[0] > 0 else 0
        if rank == 0:
            raise ValueError("the vocabulary's text features are all identical: no direction to project on")
        wanted = resolve_components("d/2" if n_components is None else n_components, singular[:rank], feats.shape[1])
        if not 1 <= wanted <= feats.shape[1]:
            raise ValueError(f"n_components must be in 1..{feats.shape[1]}, got {wanted}")
        kept = min(wanted, rank)
        self.components = vt[:kept]
        self.explained = float((singular[:kept] ** 2).sum() / (singular**2).sum())
        return self

    def apply(self, features: np.ndarray) -> np.ndarray:
        """Unit float32 rows: each feature projected onto the fitted subspace, then re-normalised."""
        if self.components is None:
            raise RuntimeError("SpanProjection.apply before fit")
        feats = np.asarray(features, np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.components.shape[1]:
            raise ValueError(f"features must be (n, {self.components.shape[1]}), got {feats.shape}")
        projected = (feats @ self.components.T) @ self.components
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return np.ascontiguousarray(projected / np.maximum(norms, 1e-12), dtype=np.float32)


def span_settings(params: dict, defaults: dict) -> dict:
    """The explicit span settings of a leg: its ``preset`` expanded, then its own keys, then ``defaults``
    (the model's default span) for whatever is still missing. Raises ValueError for unknown values."""
    preset = params.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown span preset {preset!r}: use one of {', '.join(PRESETS)}")
    merged = {**defaults, **(PRESETS[preset] if preset else {})}
    merged.update({k: v for k, v in params.items() if k in SETTINGS and v is not None})
    if merged.get("prompt") not in PROMPTS:
        raise ValueError(f"span prompt must be one of {', '.join(PROMPTS)}, got {merged.get('prompt')!r}")
    if merged.get("features") not in FEATURES:
        raise ValueError(f"span features must be one of {', '.join(FEATURES)}, got {merged.get('features')!r}")
    merged["components"] = check_components(merged.get("components"))
    return {k: merged[k] for k in SETTINGS if k in merged}
