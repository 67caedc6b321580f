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
# Scores this close are equal: float32 cosines of items a mode maps to one point differ by a few ulps (~1e-7).
TIE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Ranked:
    """One ranked list: ids best first, with their scores (inner products of unit vectors)."""

    ids: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def break_ties(ranked: Ranked, intra: np.ndarray, tolerance: float = TIE_TOLERANCE) -> Ranked:
    """``ranked`` with each run of equal scores (neighbours within ``tolerance``, chained) ordered by ``intra``
    (the plain query-gallery score of each hit) best first, then by id; the runs keep their places and the
    scores their values. Why: a mode that maps many items to one point (concept over a short label list) gives
    them one score, and an order by id would put an arbitrary one first where intra knows the nearest."""
    if len(ranked) < 2:
        return ranked
    scores = ranked.scores.astype(np.float64)
    runs = np.cumsum(np.concatenate([[True], np.abs(np.diff(scores)) > tolerance]))
    order = np.lexsort((ranked.ids, -np.asarray(intra, np.float64), runs))
    return Ranked(ranked.ids[order], ranked.scores[order])


def has_ties(ranked: Ranked, tolerance: float = TIE_TOLERANCE) -> bool:
    """Whether two neighbouring hits of ``ranked`` have equal scores (within ``tolerance``)."""
    return len(ranked) > 1 and bool((np.abs(np.diff(ranked.scores.astype(np.float64))) <= tolerance).any())


def tied_share(ranked: Ranked, tolerance: float = TIE_TOLERANCE) -> float:
    """The share of ``ranked``'s hits whose score equals a neighbour's (within ``tolerance``): 0 for a ranking
    with distinct scores, 1 when every score is the same."""
    if len(ranked) < 2:
        return 0.0
    equal = np.abs(np.diff(ranked.scores.astype(np.float64))) <= tolerance
    tied = np.zeros(len(ranked), bool)
    tied[1:] |= equal
    tied[:-1] |= equal
    return float(tied.mean())


def largest_tie(ranked: Ranked, tolerance: float = TIE_TOLERANCE) -> int:
    """The length of ``ranked``'s longest run of equal scores (1 for distinct scores, 0 for an empty list): a
    mode that collapses many items onto one point shows it here, where rank fusion's chance ties (pairs) do not."""
    if len(ranked) < 2:
        return len(ranked)
    runs = np.cumsum(np.concatenate([[True], np.abs(np.diff(ranked.scores.astype(np.float64))) > tolerance]))
    return int(np.bincount(runs).max())


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
        if not exact and len(row_ids):
            row_scores = store.exact_rerank(collection, queries[row], row_ids)
            order = np.argsort(-row_scores, kind="stable")
            row_ids, row_scores = row_ids[order], row_scores[order]
        out.append(Ranked(row_ids[:k], row_scores[:k].astype(np.float32)))
    return out
