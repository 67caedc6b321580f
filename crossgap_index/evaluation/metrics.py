"""Retrieval metrics from a full (queries x gallery) score matrix, numpy only.

Every query ranks the whole gallery (minus its excluded items), best score first, ties broken by
gallery index so results are deterministic. Metrics follow the papers' protocol: mAP over the full
ranking (the headline), mAP@R (Musgrave et al., 2020: AP truncated at R = number of relevant
items), R-precision and Recall@1 (is the top result relevant).
A query with no relevant item in the gallery has no defined AP: its per-query values are NaN and
it is left out of the means (``n_skipped`` counts them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("map", "map_at_r", "r_precision", "recall_at_1")
METRIC_TITLES = {"map": "mAP", "map_at_r": "mAP@R", "r_precision": "R-precision", "recall_at_1": "Recall@1"}
_CHUNK_ELEMENTS = 1 << 22  # rows are ranked in chunks so a large (q, g) never needs q*g int64 at once


@dataclass(frozen=True)
class RetrievalMetrics:
    """Per-query arrays (NaN where a query has no relevant item) and the relevant counts behind them."""

    per_query: dict[str, np.ndarray]
    n_relevant: np.ndarray

    @property
    def n_queries(self) -> int:
        """Queries that count: those with at least one relevant gallery item."""
        return int((self.n_relevant > 0).sum())

    @property
    def n_skipped(self) -> int:
        return int((self.n_relevant == 0).sum())

    def means(self) -> dict[str, float]:
        """Each metric averaged over the queries that count (NaN when none does)."""
        valid = self.n_relevant > 0
        return {
            name: float(values[valid].mean()) if valid.any() else float("nan")
            for name, values in self.per_query.items()
        }


def rank_order(scores: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    """Gallery indices per row, best first: excluded items last, ties by ascending gallery index."""
    scores = np.asarray(scores, np.float64)
    if exclude is None:
        return np.argsort(-scores, axis=1, kind="stable")
    return np.lexsort((-scores, np.asarray(exclude, bool)), axis=1)


def retrieval_metrics(
    scores: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    exclude: np.ndarray | None = None,
) -> RetrievalMetrics:
    """Metrics of each query's ranking of the gallery. Relevant = same label.

    ``exclude`` (q, g) bool marks pairs left out of a query's ranking, e.g. the query itself when
    queries and gallery are the same set (leave-one-out).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a (queries, gallery) matrix, got shape {scores.shape}")
    n_q, n_g = scores.shape
    if n_g == 0:
        raise ValueError("the gallery is empty")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    query_ids, gallery_ids = _shared_codes(query_labels, gallery_labels)
    if len(query_ids) != n_q or len(gallery_ids) != n_g:
        raise ValueError(f"{len(query_ids)} query and {len(gallery_ids)} gallery labels for scores {scores.shape}")
    if exclude is not None and np.shape(exclude) != scores.shape:
        raise ValueError(f"exclude has shape {np.shape(exclude)}, scores {scores.shape}")

    out = {name: np.full(n_q, np.nan) for name in METRICS}
    n_relevant = np.zeros(n_q, np.int64)
    step = max(1, _CHUNK_ELEMENTS // max(n_g, 1))
    for first in range(0, n_q, step):
        rows = slice(first, first + step)
        skip = None if exclude is None else np.asarray(exclude[rows], bool)
        order = rank_order(scores[rows], skip)
        relevant = query_ids[rows, None] == gallery_ids[None, :]
        if skip is not None:
            relevant &= ~skip
        _fill(np.take_along_axis(relevant, order, axis=1), rows, out, n_relevant)
    return RetrievalMetrics(out, n_relevant)


def _fill(hits: np.ndarray, rows: slice, out: dict[str, np.ndarray], n_relevant: np.ndarray) -> None:
    """Metrics of ranked relevance rows (excluded items already sorted to the end as non-relevant)."""
    total = hits.sum(axis=1)
    n_relevant[rows] = total
    valid = total > 0
    cumulative = np.cumsum(hits, axis=1)
    precision = cumulative / np.arange(1, hits.shape[1] + 1)
    gains = np.where(hits, precision, 0.0)
    r = np.maximum(total, 1)
    within_r = np.arange(hits.shape[1])[None, :] < r[:, None]
    values = {
        "map": gains.sum(axis=1) / r,
        "map_at_r": np.where(within_r, gains, 0.0).sum(axis=1) / r,
        "r_precision": cumulative[np.arange(len(r)), r - 1] / r,
        "recall_at_1": hits[:, 0].astype(np.float64),
    }
    for name, value in values.items():
        out[name][rows] = np.where(valid, value, np.nan)


def _shared_codes(query_labels: np.ndarray, gallery_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes for labels of any comparable type, consistent across queries and gallery."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.ndim != 1 or g.ndim != 1:
        raise ValueError("labels must be 1-D")
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    return codes[: len(q)], codes[len(q) :]
