"""Re-scoring a database's candidates with a query transform, then merging its lists as search does.

A transform names, per list, a search vector and the collection its gallery side lives in
(``image``, ``text`` or a derived one such as ``image-oti``), how lists merge (None, rrf or score, each
list ``depth`` deep) and an optional gallery map (span, iso, concept) the stored vectors are seen through.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.search.merge import fuse
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.searcher import Hit


class Transform(Protocol):
    """What the adapters read from ``CrossGapIndex.transform_query``'s QueryTransform."""

    lists: dict[str, tuple[np.ndarray, str]]
    fusion: tuple[str, float] | None
    gallery_map: object | None  # a FeatureMap: .apply(vectors) -> unit rows
    depth: int


class AdapterQueryError(QueryError, ValueError):
    """A search through an adapter cannot run as asked (a NaN or wrongly sized query vector, ``k < 1``)."""


def checked_query(query_vector, dim: int, k: int, depth: int, transform: Transform) -> np.ndarray:
    """The plain query vector as float32 (d,), once the request is one the database can answer: ``k`` and
    ``depth`` at least 1, the vector and every list's vector finite, the plain one ``dim`` wide (the stored
    vectors'). Raises AdapterQueryError (one line) otherwise."""
    for name, value in (("k", k), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise AdapterQueryError(f"{name} must be an integer of at least 1, got {value!r}")
    vector = _finite_row("the query vector", query_vector)
    if len(vector) != dim:
        raise AdapterQueryError(f"the query vector has {len(vector)} values, the stored vectors have {dim}")
    for name, (list_vector, _) in transform.lists.items():
        _finite_row(f"the transform's {name} vector", list_vector)
    return vector


def _finite_row(what: str, values) -> np.ndarray:
    try:
        row = np.asarray(values, np.float32)
    except (TypeError, ValueError) as exc:
        raise AdapterQueryError(f"{what} is not a list of numbers ({str(exc).splitlines()[0][:120]})") from None
    if row.ndim == 2 and row.shape[0] == 1:
        row = row[0]
    if row.ndim != 1 or len(row) == 0:
        raise AdapterQueryError(f"{what} must be one row of numbers, got shape {row.shape}")
    if not np.isfinite(row).all():
        raise AdapterQueryError(f"{what} holds NaN or infinite values")
    return row


def nan_padded(rows: list) -> np.ndarray:
    """Vectors (lists or None) as an (n, d) float32 matrix; a missing vector becomes a row of NaN."""
    dim = next((len(r) for r in rows if r is not None), 0)
    return np.array([r if r is not None else [np.nan] * dim for r in rows], np.float32).reshape(len(rows), dim)


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
