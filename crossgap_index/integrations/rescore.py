"""Re-scoring a database's candidates with a query transform, then merging its lists as search does.

A transform names, per list, a search vector and the collection its gallery side lives in
(``image``, ``text`` or a derived one such as ``image-oti``), how lists merge (None, rrf or score, each
list ``depth`` deep) and an optional gallery map (span, iso, concept) the stored vectors are seen through.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from crossgap_index.search.merge import fuse
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.searcher import Hit, collection_of


class Transform(Protocol):
    """What the adapters read from ``CrossGapIndex.transform_query``'s QueryTransform."""

    lists: dict[str, tuple[np.ndarray, str]]
    fusion: tuple[str, float] | None
    gallery_map: object | None  # a FeatureMap: .apply(vectors) -> unit rows
    depth: int


def target_modality(target: str) -> str:
    return collection_of(target)


def ranked(ids: np.ndarray, scores: np.ndarray) -> Ranked:
    """Best first, ties broken by id (as the merge functions do)."""
    order = np.lexsort((ids, -scores))
    return Ranked(np.asarray(ids, np.int64)[order], np.asarray(scores, np.float32)[order])


def rescore(transform: Transform, ids: np.ndarray, gallery: dict[str, np.ndarray]) -> tuple[Ranked, dict[str, Ranked]]:
    """Score the candidate pool ``ids`` (their vectors per collection in ``gallery``, NaN rows where an item
    has none) with every list of ``transform`` (through its gallery map), then ``combine``."""
    lists = {}
    for name, (vector, collection) in transform.lists.items():
        vectors = gallery[collection]
        if transform.gallery_map is not None:
            vectors = transform.gallery_map.apply(vectors)
        scores = vectors @ np.asarray(vector, np.float32)
        keep = ~np.isnan(scores)
        lists[name] = ranked(ids[keep], scores[keep])
    return combine(transform, lists)


def combine(transform: Transform, lists: dict[str, Ranked]) -> tuple[Ranked, dict[str, Ranked]]:
    """Merge per-list rankings of one candidate pool as the mode engine does (search.merge.fuse): one list
    as it is; several each cut to the transform's depth and fused. Returns the ranking and the lists shown
    in hits."""
    if len(lists) == 1 or transform.fusion is None:
        name, only = next(iter(lists.items()))
        return only, {name: only}
    heads = {name: Ranked(r.ids[: transform.depth], r.scores[: transform.depth]) for name, r in lists.items()}
    method, parameter = transform.fusion
    return fuse(heads, method, parameter, lambda name, ids: _scores_of(lists[name], ids)), heads


def _scores_of(full: Ranked, candidates: np.ndarray) -> np.ndarray:
    """A list's scores of ``candidates`` from its ranking of the whole pool (its lowest where it has none)."""
    known = dict(zip(full.ids.tolist(), full.scores.tolist(), strict=True))
    floor = min(known.values(), default=0.0)
    return np.array([known.get(i, floor) for i in candidates.tolist()], np.float64)


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
