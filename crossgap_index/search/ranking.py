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
    """Top-k of one query; see ``top_k_batch``."""
    return top_k_batch(store, collection, query[None, :], k)[0]


def top_k_batch(store: Store, collection: str, queries: np.ndarray, k: int) -> list[Ranked]:
    """Top-k of each query row; approximate indexes fetch more candidates and re-score them exactly."""
    index = store.indexes[collection]
    exact = index.resolved_factory == "Flat"
    fetch = k if exact else max(k * RERANK_FACTOR, RERANK_MIN_CANDIDATES)
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    scores, ids = store.search(collection, queries, fetch)
    out = []
    for row in range(len(queries)):
        keep = ids[row] >= 0
        row_ids, row_scores = ids[row][keep], scores[row][keep]
        if not exact and len(row_ids):  # candidates removed by another process since this state are dropped
            live, row_scores = store.exact_rerank(collection, queries[row], row_ids)
            row_ids = row_ids[live]
            order = np.argsort(-row_scores, kind="stable")
            row_ids, row_scores = row_ids[order], row_scores[order]
        out.append(Ranked(row_ids[:k], row_scores[:k].astype(np.float32)))
    return out
