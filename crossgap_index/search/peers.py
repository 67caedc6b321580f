"""The training-free re-rankers a search engineer tries first, as modes of the one engine.

Each is implemented from its paper's description; every one needs only the gallery's own vectors:

* ``dba`` (database-side augmentation, Radenović et al., TPAMI 2019): each gallery vector is replaced by the
  weighted mean of its own top-n neighbours in the gallery (itself included, weights sim^alpha), renormalised.
  Queries are unchanged. A derived collection: built once per catalog generation, free at query time.
* ``center`` (GR-CLIP: lam = 1; Distribution Normalization: lam = 0.25): each modality's mean, scaled by lam,
  is removed from its features before they are renormalised; a query's mean is its own modality's.
* ``nnn`` (Nearest Neighbor Normalization, EMNLP 2024): each gallery item g gets bias_g = the mean of its top-k
  similarities to a reference query bank, and scores become q.g - w.bias_g. Served exactly in FAISS with one
  extra dimension: q' = [q, -w], g' = [g, bias_g], a derived collection.
* ``qbnorm`` (QB-Norm with the dynamic inverted softmax, CVPR 2022) and ``aqe`` (alpha query expansion,
  Radenović et al.) re-rank at query time: search/post.py.

The reference query bank (nnn, qbnorm) is the index's own vectors of the *query's* modality (for image -> image
search: the gallery images themselves), seen through the leg's map. Why that one: NNN and QB-Norm correct
hubness with respect to the queries that will be asked, and an index's own items are the best sample of those it
has; it is always there (an image-only index has no texts to use as the other modality's bank), and a text
query against images uses the index's texts. nnn keeps each item in its own bank (as the nnn-retrieval package
does when given the gallery as its reference set: one of k terms, the same for every item); qbnorm leaves each
item out of its own statistics, because exp(beta * 1) would otherwise swamp every item's softmax denominator.

Compositions: any one-leg mode (a projection, an inversion, dba, center) followed by a post-step (aqe, nnn,
qbnorm) is one Mode (``span+aqe``); the post-step works in that leg's space (its projected gallery).

Each peer is a small class behind one protocol (``Peer``): ``adapt`` turns a leg's search vectors and gallery map
into the peer's (dba, center: a map fitted on the gallery; nnn: one extra dimension), ``rank`` may re-rank the leg's
list (aqe, qbnorm: search/post.py). The registry entry of a peer (search/builtin_modes.py) names its class;
search/run.py looks it up there and calls it, so nothing dispatches on a peer's name.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.search.fitting import FitProgress, knn_blocks, runner_of
from crossgap_index.search.projections import FeatureMap
from crossgap_index.search.ranking import Ranked

_CHUNK = 1024  # rows of a similarity block: memory CHUNK x N floats
# rank(vectors, k) -> the leg's top-k per row (the request's filter and exclusions applied)
RankFn = Callable[[np.ndarray, int], list[Ranked]]


# -- the protocol ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerLeg:
    """What a peer sees of the leg it serves: the gallery, the leg's gallery collection, the reference bank's
    collection (the index's vectors of the query's modality) and the peer's settings."""

    gallery: object
    collection: str
    bank: str
    settings: dict


class Peer(Protocol):
    """A training-free re-ranker. ``vector_form``: whether a query under it is one vector another database can
    search with (dba, center, nnn) rather than a re-ranking inside the index (aqe, qbnorm)."""

    vector_form: bool

    def adapt(
        self, vectors: np.ndarray, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> tuple[np.ndarray, FeatureMap | None]:
        """The leg's search vectors and gallery map with this peer applied."""

    def rank(
        self, rank: RankFn, vectors: np.ndarray, k: int, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> list[Ranked]:
        """The leg's top-k per row with this peer applied (``rank`` ranks in the leg's space)."""


class PeerBase:
    """A peer that changes nothing: subclasses override ``adapt``, ``rank`` or both."""

    vector_form = True

    def adapt(
        self, vectors: np.ndarray, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> tuple[np.ndarray, FeatureMap | None]:
        return vectors, feature_map

    def rank(
        self, rank: RankFn, vectors: np.ndarray, k: int, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> list[Ranked]:
        return rank(vectors, k)


class _AdaptedGallery(PeerBase):
    """dba and center: the leg's gallery seen through a map fitted on it, one per gallery version and settings."""

    map_class: type[_GalleryMap]

    def adapt(
        self, vectors: np.ndarray, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> tuple[np.ndarray, FeatureMap | None]:
        kind, gallery, dim = self.map_class.kind, leg.gallery, vectors.shape[1]
        loaders = {
            "gallery": lambda: gallery.vectors(leg.collection)[1],
            "gallery_mean": lambda: _kept_mean(gallery, leg.collection, kind),
            "query_mean": lambda: _kept_mean(gallery, leg.bank, kind),
        }
        key = (kind, leg.collection, leg.bank, json.dumps(leg.settings, sort_keys=True))
        fitted_map = fitted(
            gallery, leg.collection, key, lambda progress: self.map_class(leg.settings, None, dim, loaders).prepared()
        )
        return fitted_map.query(vectors), fitted_map


class DatabaseAugmentation(_AdaptedGallery):
    """dba: each gallery vector replaced by the weighted mean of its top-n gallery neighbours."""

    def __init__(self) -> None:
        self.map_class = DbaMap


class Centring(_AdaptedGallery):
    """center: each modality's mean (times lam) removed from its features."""

    def __init__(self) -> None:
        self.map_class = CenterMap


class NearestNeighbourNormalisation(PeerBase):
    """nnn: the leg's map wrapped into one with an extra dimension carrying each item's hubness bias."""

    def adapt(
        self, vectors: np.ndarray, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> tuple[np.ndarray, FeatureMap | None]:
        k, w, gallery = leg.settings["k"], leg.settings["w"], leg.gallery
        settings = {"k": k, "bank": leg.bank}  # in the fingerprint: one derived collection per bank
        loaders = {"bank": lambda: _bank_vectors(gallery, leg.bank, "nnn")}
        key = ("nnn", leg.collection, leg.bank, k, _fingerprint(feature_map))
        out_dim = vectors.shape[1] + 1
        nnn = fitted(gallery, leg.collection, key, lambda progress: NnnMap(settings, feature_map, out_dim, loaders))
        return nnn.query(vectors, w), nnn


# -- the maps the gallery is seen through ------------------------------------------------------------------


class _GalleryMap:
    """A map fitted on the index's own vectors: ``apply`` turns gallery rows (plain stored vectors) into the rows
    the gallery is searched as, ``query`` turns a leg's query vectors into its search vectors. Duck-types the
    engine's feature maps (kind, settings, fingerprint, out_dim, apply), so galleries keep them as derived
    collections exactly like span or iso. The statistics are loaded on first use: a derived collection already
    saved for this catalog generation is served without reading the bank."""

    kind = ""

    def __init__(self, settings: dict, base, out_dim: int, loaders: dict[str, Callable[[], np.ndarray]]):
        self.settings = settings
        self.base = base  # the leg's own map (span, iso, concept, dba, center) or None
        self._out_dim = out_dim
        self._loaders = loaders  # name -> what a statistic is computed from (vectors, a mean), read on first use
        self._stats: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def out_dim(self) -> int:
        return self._out_dim

    @property
    def fingerprint(self) -> str:
        payload = json.dumps({"kind": self.kind, **self.settings, "base": _fingerprint(self.base)}, sort_keys=True)
        return f"{self.kind}-{hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()}"

    def _stat(self, name: str) -> np.ndarray:
        with self._lock:
            if name not in self._stats:
                self._stats[name] = np.asarray(self._loaders[name](), np.float32)
            return self._stats[name]

    def prepared(self, progress: FitProgress | None = None) -> _GalleryMap:
        """This map with the statistics a query reads fitted now, so that answering a query never fits; the
        rest of the work is the derived collection's build (``apply`` in blocks)."""
        return self


class DbaMap(_GalleryMap):
    kind = "dba"

    def apply(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, np.float32))
        return dba_rows_blocked(rows, self._stat("gallery"), self.settings["n"], self.settings["alpha"])

    def query(self, vectors: np.ndarray) -> np.ndarray:
        return np.atleast_2d(np.asarray(vectors, np.float32))


class CenterMap(_GalleryMap):
    kind = "center"

    def prepared(self, progress: FitProgress | None = None) -> CenterMap:
        self._stat("gallery_mean")
        self._stat("query_mean")
        return self

    def apply(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, np.float32))
        return _unit(rows - self.settings["lam"] * self._stat("gallery_mean"))

    def query(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        return _unit(vectors - self.settings["lam"] * self._stat("query_mean"))


class NnnMap(_GalleryMap):
    """nnn: g' = [g, bias_g] through the leg's own map, bias_g the mean of g's top-k similarities to the bank."""

    kind = "nnn"

    def apply(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, np.float32))
        mapped = np.asarray(rows, np.float32) if self.base is None else self.base.apply(rows)
        bias = top_k_mean_blocked(mapped, self._bank(), self.settings["k"])
        return np.ascontiguousarray(np.hstack([mapped, bias[:, None]]), dtype=np.float32)

    def _bank(self) -> np.ndarray:
        with self._lock:
            if "bank" not in self._stats:
                bank = np.asarray(self._loaders["bank"](), np.float32)
                self._stats["bank"] = bank if self.base is None else self.base.apply(bank)
            return self._stats["bank"]

    def query(self, vectors: np.ndarray, w: float) -> np.ndarray:
        """q' = [q, -w]: q'.g' = q.g - w * bias_g."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        return np.ascontiguousarray(np.hstack([vectors, np.full((len(vectors), 1), -w, np.float32)]), np.float32)


def _fingerprint(feature_map) -> str | None:
    return None if feature_map is None else feature_map.fingerprint


def _kept_mean(gallery, collection: str, kind: str) -> np.ndarray:
    """A collection's mean vector, summed a block at a time (float64) and kept by the gallery between processes
    (reading every vector is the cost). QueryError when the collection is empty."""

    def fit() -> dict[str, np.ndarray]:
        total, count = None, 0
        for _, block in gallery.vector_blocks(collection):
            part = np.asarray(block, np.float64).sum(axis=0)
            total, count = (part if total is None else total + part), count + len(block)
        if count == 0:
            raise QueryError(f"{kind}: the index has no {collection} vectors to draw its statistics from")
        return {"mean": (total / count).astype(np.float32)}

    return gallery.keep(f"{collection}@mean", fit)["mean"]


def _unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.ascontiguousarray(rows / np.maximum(norms, 1e-12), dtype=np.float32)


def top_k_mean_blocked(rows: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """``top_k_mean`` by FAISS in blocks (fitting.knn_blocks): memory a block's top-k, never rows x bank."""
    if len(bank) == 0:
        raise QueryError("nnn: the reference bank is empty (no vectors of the query's modality in the index)")
    out = np.zeros(len(rows), np.float32)
    for first, scores, _ in knn_blocks(rows, bank, k):
        out[first : first + len(scores)] = np.sort(scores, axis=1).mean(axis=1)  # ascending, as top_k_mean sums
    return out


def dba_rows_blocked(rows: np.ndarray, bank: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """``dba_rows`` by FAISS in blocks (fitting.knn_blocks): memory a block's top-n and their vectors."""
    out = np.zeros_like(rows, dtype=np.float32)
    for first, scores, positions in knn_blocks(rows, bank, n):
        weights = np.maximum(scores, 0.0) ** alpha
        out[first : first + len(scores)] = np.einsum("rn,rnd->rd", weights, bank[positions])
    return _unit(out)


def top_k_mean(rows: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """For each row, the mean of its ``k`` largest similarities to the bank's rows (all of them when fewer).
    The straightforward twin (a similarity matrix per chunk) that ``top_k_mean_blocked`` is tested against."""
    out = np.zeros(len(rows), np.float32)
    if len(bank) == 0:
        raise QueryError("nnn: the reference bank is empty (no vectors of the query's modality in the index)")
    k = min(k, len(bank))
    for start in range(0, len(rows), _CHUNK):
        sims = rows[start : start + _CHUNK] @ bank.T
        top = np.partition(sims, len(bank) - k, axis=1)[:, len(bank) - k :]
        out[start : start + _CHUNK] = np.sort(top, axis=1).mean(axis=1)  # sorted: a sum independent of order
    return out


def dba_rows(rows: np.ndarray, bank: np.ndarray, n: int, alpha: float) -> np.ndarray:
    """Each row replaced by normalise(sum over its top-n bank neighbours of max(sim, 0)^alpha * neighbour).
    The straightforward twin (a similarity matrix per chunk) that ``dba_rows_blocked`` is tested against."""
    out = np.zeros_like(rows, dtype=np.float32)
    n = min(n, len(bank))
    for start in range(0, len(rows), _CHUNK):
        sims = rows[start : start + _CHUNK] @ bank.T
        top = np.argpartition(-sims, n - 1, axis=1)[:, :n]  # the n best, in any order (a sum follows)
        weights = np.maximum(np.take_along_axis(sims, top, axis=1), 0.0) ** alpha
        out[start : start + _CHUNK] = np.einsum("rn,rnd->rd", weights, bank[top])
    return _unit(out)


# -- fitting a map or statistics against a gallery, cached per gallery and catalog generation ---------------

_FITTED_LOCK = threading.Lock()


def bank_of(gallery, projection, coll: str, bank_collection: str) -> tuple[np.ndarray, ...]:
    """(gallery ids, gallery rows, bank ids, bank rows), rows in the leg's space: qbnorm's inputs."""
    ids, vectors = gallery.vectors(coll)
    try:
        bank_ids, bank = gallery.vectors(bank_collection)
    except KeyError:
        bank_ids, bank = np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    if len(bank) == 0:
        raise QueryError(f"qbnorm: the index has no {bank_collection} vectors to draw its statistics from")
    if projection is not None:
        vectors, bank = projection.apply(vectors), projection.apply(bank)
    return ids, np.asarray(vectors, np.float32), np.asarray(bank_ids), np.asarray(bank, np.float32)


def _bank_vectors(gallery, collection: str, kind: str) -> np.ndarray:
    try:
        vectors = gallery.vectors(collection)[1]
    except KeyError:
        vectors = np.zeros((0, 0), np.float32)
    if len(vectors) == 0:
        raise QueryError(f"{kind}: the index has no {collection} vectors to draw its statistics from")
    return np.asarray(vectors, np.float32)


def fitted(gallery, collection: str, key: tuple, make: Callable[[FitProgress], object], total: int | None = None):
    """One fitted object per gallery, key and catalog generation (a gallery that changes gets fresh ones), held
    by the gallery itself, so it lives exactly as long as the gallery. ``make(progress)`` runs through the
    gallery's fit runner (search/fitting.py): in this thread, or in the background with FitPending raised
    here until it is done; ``total``: the rows it reads (for progress)."""
    version = gallery.version(collection)
    with _FITTED_LOCK:
        entry = gallery.fitted.get(key)
    if entry is not None and entry[0] == version:
        return entry[1]
    label = f"{key[0]} on the {collection} collection"
    value = runner_of(gallery).run(("fitted", key), version, label, total or 0, make)
    with _FITTED_LOCK:
        gallery.fitted[key] = (version, value)
    return value
