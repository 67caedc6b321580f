"""Top-k over one stored collection, with an exact re-rank for indexes whose scores are approximate.

A query from the other modality (an OTI text feature against image vectors) is out of
distribution for an index trained on the gallery's own vectors, so indexes over compressed
codes (SQ8, PQ, ...) are asked for more candidates, which are then scored exactly from the
stored vectors. An index that holds the float32 vectors themselves (Flat, IVF-Flat) already
scores exactly, and with a fixed nprobe its top-k is the prefix of its top-100: it is asked
for k and not re-scored (``faiss_scores_exact``).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
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


def faiss_scores_exact(store: Store, collection: str) -> bool:
    """Whether FAISS's scores for ``collection`` are the exact inner products with the stored vectors, so
    re-scoring from the shards would change nothing: the index under IDMap2 is a Flat or an IVF-Flat (no
    pre-transform: its codes are the float32 vectors) and the shards store float32 (float16 shards are
    the reference, and FAISS holds the vectors as they were added)."""
    index = store.indexes[collection].index
    if not isinstance(index, faiss.IndexIDMap2):
        return False
    inner = faiss.downcast_index(index.index)
    return isinstance(inner, faiss.IndexFlat | faiss.IndexIVFFlat) and store.catalog.vector_dtype() == "float32"


def top_k_batch(
    store: Store, collection: str, queries: np.ndarray, k: int, rescore: bool | None = None
) -> list[Ranked]:
    """Top-k of each query row. Where FAISS's scores are approximate, more candidates are fetched and
    re-scored exactly, all the batch's candidate rows read in one pass. ``rescore``: True forces that
    path (the oracle the exact-index shortcut is tested against), None decides by ``faiss_scores_exact``."""
    if rescore is None:
        rescore = not faiss_scores_exact(store, collection)
    fetch = max(k * RERANK_FACTOR, RERANK_MIN_CANDIDATES) if rescore else k
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    scores, ids = store.search(collection, queries, fetch)
    kept = [ids[row] >= 0 for row in range(len(queries))]
    rows = [(ids[row][keep], scores[row][keep]) for row, keep in enumerate(kept)]
    if rescore:
        rows = _rescored(store, collection, queries, [row_ids for row_ids, _ in rows])
    return [Ranked(row_ids[:k], row_scores[:k].astype(np.float32)) for row_ids, row_scores in rows]


def _rescored(
    store: Store, collection: str, queries: np.ndarray, candidates: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's candidates ordered by their exact scores; the stored rows of every distinct candidate
    in the batch are read once, in one catalog lookup and one shard pass. Candidates removed by another
    process since this state are dropped."""
    everyone = np.concatenate(candidates) if candidates else np.zeros(0, np.int64)
    distinct, where = np.unique(everyone, return_inverse=True)
    live, vectors = store.live_vectors(collection, distinct) if len(distinct) else (np.zeros(0, bool), None)
    row_of = np.cumsum(live) - 1  # a live candidate's row in ``vectors``
    out = []
    start = 0
    for query, row_ids in zip(queries, candidates, strict=True):
        positions = where[start : start + len(row_ids)]
        start += len(row_ids)
        kept = live[positions]
        row_ids = row_ids[kept]
        if not len(row_ids):
            out.append((row_ids, np.zeros(0, np.float32)))
            continue
        row_scores = vectors[row_of[positions[kept]]] @ query
        order = np.argsort(-row_scores, kind="stable")
        out.append((row_ids[order], row_scores[order]))
    return out
