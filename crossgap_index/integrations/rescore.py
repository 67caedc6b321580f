"""Re-scoring a database's candidates with a query transform, then merging its lists as search does.

A transform names, per list, a search vector and the collection its gallery side lives in
(``image``, ``text`` or a derived one such as ``image-oti``), how lists merge (None, rrf or score)
and an optional gallery map M (gallery vectors compared as normalise(v @ M.T)).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from crossgap_index.api import TARGETS, Hit
from crossgap_index.errors import QueryError
from crossgap_index.search.merge import reciprocal_rank_fusion, score_fusion
from crossgap_index.search.ranking import Ranked


class Transform(Protocol):
    """What the adapters read from ``CrossGapIndex.transform_query``'s QueryTransform."""

    lists: dict[str, tuple[np.ndarray, str]]
    fusion: tuple[str, float] | None
    gallery_map: np.ndarray | None


def target_modality(target: str) -> str:
    if target not in TARGETS:
        raise QueryError(f"unknown target '{target}': use one of {', '.join(TARGETS)}")
    return TARGETS[target]


def ranked(ids: np.ndarray, scores: np.ndarray) -> Ranked:
    """Best first, ties broken by id (as the merge functions do)."""
    order = np.lexsort((ids, -scores))
    return Ranked(np.asarray(ids, np.int64)[order], np.asarray(scores, np.float32)[order])


def map_gallery(vectors: np.ndarray, gallery_map: np.ndarray | None) -> np.ndarray:
    if gallery_map is None:
        return vectors
    mapped = vectors @ gallery_map.T
    return mapped / np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)


def rescore(transform: Transform, ids: np.ndarray, gallery: dict[str, np.ndarray]) -> tuple[Ranked, dict[str, Ranked]]:
    """Score candidates ``ids`` (their vectors per collection in ``gallery``, NaN rows where an item has
    none) with every list of ``transform``; return the merged ranking and each list's."""
    lists, exact = {}, {}
    for name, (vector, collection) in transform.lists.items():
        scores = map_gallery(gallery[collection], transform.gallery_map) @ np.asarray(vector, np.float32)
        keep = ~np.isnan(scores)
        lists[name] = ranked(ids[keep], scores[keep])
        exact[name] = scores
    return merge(transform, lists, ids, exact), lists


def merge(
    transform: Transform, lists: dict[str, Ranked], candidates: np.ndarray, exact: dict[str, np.ndarray]
) -> Ranked:
    """One list as it is; several by rrf or score fusion over ``candidates`` (``exact``: each list's
    scores of the candidates, NaN where a list has none: that list's lowest score stands in)."""
    if len(lists) == 1 or transform.fusion is None:
        return next(iter(lists.values()))
    method, parameter = transform.fusion
    if method == "rrf":
        return reciprocal_rank_fusion(lists, int(parameter))
    filled = {n: np.where(np.isnan(s), np.nanmin(s) if np.isfinite(s).any() else 0.0, s) for n, s in exact.items()}
    return score_fusion(candidates, filled, score_weights(list(lists), float(parameter)))


def score_weights(names: list[str], alpha: float) -> dict[str, float]:
    """As CrossGapIndex.search: the plain list weighs 1 - alpha, the transformed lists share alpha."""
    others = [n for n in names if n != "intra"]
    return {n: (1.0 - alpha) if n == "intra" else alpha / len(others) for n in names}


def hits(fused: Ranked, lists: dict[str, Ranked], rows: dict[int, dict], k: int) -> list[Hit]:
    """The top ``k`` as Hits; ``rows``: id -> modality, path, text, external_id from the database."""
    positions = {
        name: {i: (r, s) for r, (i, s) in enumerate(zip(lst.ids.tolist(), lst.scores.tolist(), strict=True), 1)}
        for name, lst in lists.items()
    }
    out = []
    for item_id, score in zip(fused.ids[:k].tolist(), fused.scores[:k].tolist(), strict=True):
        found = {name: pos[item_id] for name, pos in positions.items() if item_id in pos}
        row = rows[item_id]
        out.append(
            Hit(
                item_id,
                score,
                row["modality"],
                row.get("path"),
                row.get("text"),
                row.get("external_id"),
                ranks={name: r for name, (r, _) in found.items()},
                scores={name: s for name, (_, s) in found.items()},
            )
        )
    return out
