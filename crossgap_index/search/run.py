"""The one function that runs a mode: transform the queries, rank each leg against its gallery side, fuse.

``CrossGapIndex.search`` / ``search_batch`` run it over the index's FAISS collections (``StoreGallery``),
``cgx eval`` and ``cgx tune`` over in-memory features (``MatrixGallery``), so an eval number is the number
a query is served. Batches are first-class: a leg's transform sees every query at once (one inversion
call per batch), each query's result is independent of its neighbours.

Fusion: each leg is ranked ``depth`` deep and the union merged (rrf or score); when ``k`` asks for more
than the union holds, the first leg's ranking continues the list, so a full-length ranking (eval) and a
top-k (search) agree on their common prefix.

Ties: every mode's final ranking orders hits with equal scores (within ``ranking.TIE_TOLERANCE``) by their intra
score (plain query . plain gallery vector), then by id. A tied run that crosses the k-th hit is widened (up to
``TIE_WINDOW`` more items) so the hits kept are the best of the run by intra. Eval ranks the whole gallery, so
its numbers do not depend on the order items were stored in; a served top-k is the same list's prefix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.search.filters import Admit, filtered_top_k
from crossgap_index.search.merge import fuse
from crossgap_index.search.mode_spec import Leg, Mode, gallery_collection
from crossgap_index.search.peers import Peer, PeerLeg
from crossgap_index.search.projections import FeatureMap
from crossgap_index.search.ranking import TIE_TOLERANCE, Ranked, break_ties, has_ties
from crossgap_index.search.registry import mode_entry, peer_names
from crossgap_index.words import MODALITIES

TIE_WINDOW = 4096  # how far past the k-th hit a tied run is followed to find its best items by intra


@dataclass(frozen=True)
class Queries:
    """A batch of embedded queries: unit features (n, d), their modality, each one's content hash."""

    features: np.ndarray
    modality: str
    digests: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class Result:
    """One query's merged ranking and each leg's own list (for the ranks and scores a hit shows)."""

    ranked: Ranked
    lists: dict[str, Ranked]


class Gallery(Protocol):
    """Where legs are ranked: named collections of unit vectors, optionally seen through a projection."""

    def top_k(self, collection: str, queries: np.ndarray, k: int, projection: FeatureMap | None) -> list[Ranked]:
        """Best ``k`` per query row, best first."""

    def scores(self, collection: str, query: np.ndarray, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        """Exact scores of one query with the given items."""

    # What the peers (search/peers.py, search/post.py) fit their statistics on, and where they hold them:
    fitted: dict

    def vectors(self, collection: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, plain vectors) of a whole collection."""

    def vectors_of(self, collection: str, ids: np.ndarray, projection: FeatureMap | None) -> np.ndarray:
        """The rows of ``ids`` as the gallery is searched (through ``projection``)."""

    def version(self, collection: str) -> int:
        """Changes whenever the collections do: fitted statistics are valid for one version."""

    def keep(self, name: str, make: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Arrays fitted on the gallery, ``make``-d once per version (and kept between processes where it can)."""


class Transformer(Protocol):
    """Turns a batch of queries into one leg's search vectors, and names the projection a leg uses."""

    def search_vectors(self, leg: Leg, queries: Queries, collection: str) -> np.ndarray: ...

    def projection(self, leg: Leg, collection: str) -> FeatureMap | None: ...


# The stored inverted gallery of each modality: images' OTI (text-space) features, texts' OVI (image-space) ones.
def run_mode(
    mode: Mode,
    queries: Queries,
    collection: str,
    k: int,
    gallery: Gallery,
    transformer: Transformer,
    exclude: np.ndarray | None = None,
    admit: Admit | None = None,
) -> list[Result]:
    """Rank ``collection`` for every query under ``mode``; ``exclude`` (one id per query, or None) leaves
    that item out of the query's lists (leave-one-out evaluation); ``admit`` (search/filters.py) says which
    items each query may return, and every list is ranked among those only, before any fusion or post-step.
    Equal scores are ordered by intra (above)."""
    if len(queries) == 0:
        return []
    admit = _with_exclusions(admit, exclude)
    results = _run(mode, queries, collection, k + 1, gallery, transformer, admit)
    depth = k + 1
    while depth < k + TIE_WINDOW:
        crossing = [row for row, r in enumerate(results) if _tied_past_end(r.ranked, k, depth)]
        if not crossing:
            break
        depth = min(4 * depth, k + TIE_WINDOW)
        subset = Queries(queries.features[crossing], queries.modality, tuple(queries.digests[i] for i in crossing))
        wider = _run(mode, subset, collection, depth, gallery, transformer, _for_rows(admit, crossing))
        for row, result in zip(crossing, wider, strict=True):
            results[row] = result
    return [_ordered(result, queries.features[row], collection, k, gallery) for row, result in enumerate(results)]


def _tied_past_end(ranked: Ranked, k: int, depth: int) -> bool:
    """Whether the tied run holding the k-th hit runs to the end of a ``depth``-deep list (more may follow)."""
    if k < 1 or len(ranked) < depth or len(ranked) <= k:
        return False
    return bool((np.abs(np.diff(ranked.scores[k - 1 :].astype(np.float64))) <= TIE_TOLERANCE).all())


def _ordered(result: Result, query: np.ndarray, collection: str, k: int, gallery: Gallery) -> Result:
    """``result`` cut to ``k`` with its tied runs ordered by the intra score; a one-leg mode's own list with it."""
    ranked = result.ranked
    if has_ties(ranked):
        try:
            intra = gallery.scores(collection, query, ranked.ids, None)
        except KeyError:  # a reader whose FAISS files predate a removal: the searcher drops the stale ids and
            intra = None  # ranks again (searcher._backfilled), which orders the live items' ties
        if intra is not None:
            ranked = break_ties(ranked, intra)
    ranked = Ranked(ranked.ids[:k], ranked.scores[:k])
    lists = {name: (ranked if own is result.ranked else own) for name, own in result.lists.items()}
    return Result(ranked, lists)


def _run(
    mode: Mode,
    queries: Queries,
    collection: str,
    k: int,
    gallery: Gallery,
    transformer: Transformer,
    admit: Admit | None,
) -> list[Result]:
    n = len(queries)
    legs = []
    for leg in mode.legs:
        vectors = transformer.search_vectors(leg, queries, collection)
        projection = transformer.projection(leg, collection)
        vectors, projection = apply_peers(mode, leg, vectors, projection, gallery, collection, queries.modality)
        legs.append((leg, vectors, gallery_collection(leg, collection), projection))
    if mode.post is not None:
        return _post_step(mode, legs[0], queries.modality, collection, k, gallery, admit)
    if mode.fusion is None:
        leg, vectors, coll, projection = legs[0]
        ranked = _ranked(gallery, coll, vectors, k, projection, admit)
        return [Result(r, {leg.name: r}) for r in ranked]
    depth = max(mode.depth, 1)
    lists = [_ranked(gallery, coll, vectors, depth, projection, admit) for _, vectors, coll, projection in legs]
    fill = None
    if k > depth:  # the first leg continues the fused head
        first_leg = legs[0]
        fill = _ranked(gallery, first_leg[2], first_leg[1], k, first_leg[3], admit)
    results = []
    for row in range(n):
        named = {leg.name: ranked[row] for (leg, *_), ranked in zip(legs, lists, strict=True)}
        parameter = mode.rrf_k if mode.fusion == "rrf" else mode.alpha
        by_name = {leg.name: (coll, vectors[row], projection) for leg, vectors, coll, projection in legs}

        def exact(name: str, ids: np.ndarray, by_name=by_name) -> np.ndarray:
            collection, vector, projection = by_name[name]
            return gallery.scores(collection, vector, ids, projection)

        fused = fuse(named, mode.fusion, parameter, exact)
        if fill is not None:
            fused = _continue(fused, fill[row])
        results.append(Result(Ranked(fused.ids[:k], fused.scores[:k]), named))
    return results


def _post_step(
    mode: Mode, leg: tuple, modality: str, collection: str, k: int, gallery: Gallery, admit: Admit | None
) -> list[Result]:
    """A one-leg mode followed by its post-step, ranked through the leg's own gallery side."""
    leg_, vectors, coll, projection = leg

    def rank(rows: np.ndarray, depth: int) -> list[Ranked]:
        return _ranked(gallery, coll, rows, depth, projection, admit)

    peer, peer_leg = _peer_step(mode.post, gallery, coll, _bank(modality, collection))
    return [Result(r, {leg_.name: r}) for r in peer.rank(rank, vectors, k, projection, peer_leg)]


def apply_peers(
    mode: Mode,
    leg: Leg,
    vectors: np.ndarray,
    projection: FeatureMap | None,
    gallery: Gallery,
    collection: str,
    query_modality: str,
) -> tuple[np.ndarray, FeatureMap | None]:
    """A leg's search vectors and gallery map once its peers are applied: an adapted leg's (dba, center) and then
    the mode's post-step's (nnn adds its dimension; aqe and qbnorm change nothing here, they re-rank)."""
    coll, bank = gallery_collection(leg, collection), _bank(query_modality, collection)
    steps = ([leg.params] if leg.transform == "adapt" else []) + ([mode.post] if mode.post is not None else [])
    for params in steps:
        peer, peer_leg = _peer_step(params, gallery, coll, bank)
        vectors, projection = peer.adapt(vectors, projection, peer_leg)
    return vectors, projection


def peer_of(kind: str) -> Peer:
    """The Peer that runs ``kind``, from its registry entry; one line when ``kind`` names no peer."""
    entry = mode_entry(kind)
    if entry.implementation is None:
        raise QueryError(f"'{kind}' is not a peer: use one of {', '.join(peer_names())}")
    return entry.implementation()


def _peer_step(params: dict, gallery: Gallery, coll: str, bank: str) -> tuple[Peer, PeerLeg]:
    settings = {key: value for key, value in params.items() if key != "kind"}
    return peer_of(params["kind"]), PeerLeg(gallery, coll, bank, settings)


def _bank(query_modality: str, collection: str) -> str:
    """The reference bank of nnn and qbnorm: the index's vectors of the query's modality (search/peers.py)."""
    return query_modality if query_modality in MODALITIES else collection


def _ranked(
    gallery: Gallery,
    collection: str,
    vectors: np.ndarray,
    k: int,
    projection: FeatureMap | None,
    admit: Admit | None,
) -> list[Ranked]:
    if admit is None:
        return gallery.top_k(collection, vectors, k, projection)
    return filtered_top_k(lambda rows, depth: gallery.top_k(collection, rows, depth, projection), vectors, k, admit)


def _for_rows(admit: Admit | None, rows: list[int]) -> Admit | None:
    """``admit`` for a batch made of ``rows`` of the batch it was made for (its row i is their row rows[i])."""
    if admit is None:
        return None
    return lambda row, ids: admit(rows[row], ids)


def _with_exclusions(admit: Admit | None, exclude: np.ndarray | None) -> Admit | None:
    """``admit`` that also refuses each query's ``exclude`` id."""
    if exclude is None:
        return admit
    skip = exclude.tolist()

    def admit_and_skip(row: int, ids: np.ndarray) -> np.ndarray:
        keep = ids != skip[row]
        return keep if admit is None else keep & admit(row, ids)

    return admit_and_skip


def _continue(head: Ranked, tail: Ranked) -> Ranked:
    """``head`` followed by the items of ``tail`` it lacks, scored below every head item."""
    extra = tail.ids[~np.isin(tail.ids, head.ids)]
    floor = float(head.scores.min()) if len(head) else 0.0
    scores = floor - np.arange(1, len(extra) + 1, dtype=np.float32)
    return Ranked(np.concatenate([head.ids, extra]), np.concatenate([head.scores, scores]).astype(np.float32))
