"""Span projection (Herzog & Wang): compare features inside the subspace that concept names span.

Their zero-query-cost alternative to modality inversion: embed a vocabulary of concept names with
the text tower, centre those text features, keep the top principal directions (d/2 by default),
then project query and gallery features onto the span of those directions and re-normalise. The
centring only serves to find the directions; features are projected through the origin, not
shifted by the vocabulary's mean first (on a development set the two differed by under 0.2 mAP).
Projected features stay in the model's d-dimensional space (rank ``n_components``), so they can be
stored and searched like any other unit vectors.
"""

from __future__ import annotations

import numpy as np

_RANK_TOL = 1e-6  # singular values below this fraction of the largest are numerical noise


class SpanProjection:
    """``fit`` on text features of a vocabulary, then ``apply`` to any features of the same dimension."""

    def __init__(self) -> None:
        self.components: np.ndarray | None = None  # (k, d), orthonormal rows

    @property
    def n_components(self) -> int:
        return 0 if self.components is None else int(self.components.shape[0])

    def fit(self, text_features: np.ndarray, n_components: int | None = None) -> SpanProjection:
        """Keep the top ``n_components`` (default d // 2) principal directions of the centred features.

        A vocabulary of n names spans at most n - 1 centred directions; asking for more keeps only
        those (the rest would be arbitrary), so read ``n_components`` after fitting.
        """
        feats = np.asarray(text_features, np.float64)
        if feats.ndim != 2 or len(feats) < 2:
            raise ValueError(f"span projection needs at least 2 text features as an (n, d) array, got {feats.shape}")
        wanted = feats.shape[1] // 2 if n_components is None else n_components
        if not 1 <= wanted <= feats.shape[1]:
            raise ValueError(f"n_components must be in 1..{feats.shape[1]}, got {wanted}")
        _, singular, vt = np.linalg.svd(feats - feats.mean(axis=0), full_matrices=False)
        rank = int((singular > _RANK_TOL * singular[0]).sum()) if singular[0] > 0 else 0
        if rank == 0:
            raise ValueError("the vocabulary's text features are all identical: no direction to project on")
        self.components = vt[: min(wanted, rank)]
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
