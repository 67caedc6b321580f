"""Merging ranked lists: reciprocal rank fusion, or a weighted sum of normalised scores."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from crossgap_index.search.ranking import Ranked
from crossgap_index.words import RRF_K


def reciprocal_rank_fusion(lists: dict[str, Ranked], rrf_k: int = RRF_K) -> Ranked:
    """score(id) = sum over lists of 1 / (rrf_k + rank), ranks 1-based; absent from a list adds 0."""
    fused: dict[int, float] = {}
    for ranked in lists.values():
        for rank, item in enumerate(ranked.ids.tolist(), 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (rrf_k + rank)
    return _sorted(fused)


def score_fusion(candidates: np.ndarray, exact: dict[str, np.ndarray], weights: dict[str, float]) -> Ranked:
    """Weighted sum of each list's exact scores over the same candidates, min-max normalised per list
    so lists with different score ranges (intra ~0.8, inter-modal ~0.3 for CLIP) weigh as intended."""
    total = np.zeros(len(candidates), np.float64)
    for name, scores in exact.items():
        span = float(scores.max() - scores.min()) if len(scores) else 0.0
        normalised = (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
        total += weights[name] * normalised
    return _sorted(dict(zip(candidates.tolist(), total.tolist(), strict=True)))


def fuse(
    heads: dict[str, Ranked], method: str, parameter: float, exact: Callable[[str, np.ndarray], np.ndarray]
) -> Ranked:
    """Merge two or more lists' heads (each already cut to the fusion depth), in order: ``rrf`` with
    ``parameter`` as its constant, or ``score`` over the union of the heads with each list's exact scores
    (``exact(name, candidates)``), weight ``parameter`` on the second list. The mode engine and the
    database adapters both merge through here, so a fused list is the same wherever it is made."""
    if method == "rrf":
        return reciprocal_rank_fusion(heads, int(parameter))
    candidates = np.unique(np.concatenate([r.ids for r in heads.values()]))
    names = list(heads)
    weights = {name: (parameter if name == names[1] else 1.0 - parameter) for name in names}
    return score_fusion(candidates, {name: exact(name, candidates) for name in names}, weights)


def _sorted(scores: dict[int, float]) -> Ranked:
    ids = np.fromiter(scores.keys(), np.int64, len(scores))
    values = np.fromiter(scores.values(), np.float64, len(scores))
    order = np.lexsort((ids, -values))  # best first; ties broken by id for determinism
    return Ranked(ids[order], values[order].astype(np.float32))
