"""Top-k over one stored collection, with an exact re-rank for approximate indexes.

A query from the other modality (an OTI text feature against image vectors) is out of
distribution for an index trained on the gallery's own vectors, so approximate indexes
are asked for more candidates, which are then scored exactly from the stored vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crossgap_index.store.directory import Store

RERANK_FACTOR = 10
RERANK_MIN_CANDIDATES = 100


@dataclass(frozen=True)
class Ranked:
    """One ranked list: ids best first, with their scores (inner products of unit vectors)."""

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def top_k(store: Store, collection: str, query: np.ndarray, k: int) -> Ranked:
    index = store.indexes[collection]
    exact = index.resolved_factory == "Flat"
    fetch = k if exact else max(k * RERANK_FACTOR, RERANK_MIN_CANDIDATES)
    scores, ids = store.search(collection, query[None, :], fetch)
    keep = ids[0] >= 0
    ids, scores = ids[0][keep], scores[0][keep]
    if not exact and len(ids):
        scores = store.exact_rerank(collection, query, ids)
        order = np.argsort(-scores, kind="stable")
        ids, scores = ids[order], scores[order]
    return Ranked(ids[:k], scores[:k].astype(np.float32))
