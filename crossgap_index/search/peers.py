"""The training-free re-rankers a search engineer tries first, as modes of the one engine (each paper cited below).

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
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Sequence

import numpy as np

from crossgap_index.errors import QueryError
from crossgap_index.search.fitting import FitProgress, knn_blocks, runner_of
from crossgap_index.search.modes import POST_STEPS, Leg, Mode, gallery_collection, peer_mode

_CHUNK = 1024  # rows of a similarity block: memory CHUNK x N floats
_COLLECTION_OF = {"image": "image", "text": "text"}


# -- the maps the gallery is seen through ------------------------------------------------------------------


class PeerMap:
    """A map fitted on the index's own vectors: ``apply`` turns gallery rows (plain stored vectors) into the rows
    the gallery is searched as, ``query`` turns a leg's query vectors into its search vectors. Duck-types the
    engine's feature maps (kind, settings, fingerprint, out_dim, apply), so galleries keep them as derived
    collections exactly like span or iso. The statistics are loaded on first use: a derived collection already
    saved for this catalog generation is served without reading the bank."""

    def __init__(self, kind: str, settings: dict, base, out_dim: int, loaders: dict[str, Callable[[], np.ndarray]]):
        self.kind = kind
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

    def _stat(self, name: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            if name not in self._stats:
                self._stats[name] = compute()
            return self._stats[name]

    def _based(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(rows, np.float32) if self.base is None else self.base.apply(rows)

    def _bank(self) -> np.ndarray:
        return self._stat("bank", lambda: self._based(self._loaders["bank"]()))

    def prepared(self, progress: FitProgress | None = None) -> PeerMap:
        """This map with the statistics a query reads fitted now (center's means), so that answering a query
        never fits; dba's and nnn's work is the derived collection's build (``apply`` in blocks)."""
        if self.kind == "center":
            self._stat("gallery_mean", lambda: self._loaders["gallery_mean"]())
            self._stat("query_mean", lambda: self._loaders["query_mean"]())
        return self

    def apply(self, rows: np.ndarray) -> np.ndarray:
        rows = np.atleast_2d(np.asarray(rows, np.float32))
        if self.kind == "center":
            mean = self._stat("gallery_mean", lambda: self._loaders["gallery_mean"]())
            return _unit(rows - self.settings["lam"] * mean)
        if self.kind == "dba":
            neighbours = self._stat("neighbours", lambda: np.asarray(self._loaders["gallery"](), np.float32))
            return dba_rows_blocked(rows, neighbours, self.settings["n"], self.settings["alpha"])
        mapped = self._based(rows)  # nnn: [g, bias_g]
        bias = top_k_mean_blocked(mapped, self._bank(), self.settings["k"])
        return np.ascontiguousarray(np.hstack([mapped, bias[:, None]]), dtype=np.float32)

    def query(self, vectors: np.ndarray) -> np.ndarray:
        """A leg's query vectors as this map searches with them."""
        vectors = np.atleast_2d(np.asarray(vectors, np.float32))
        if self.kind == "center":
            mean = self._stat("query_mean", lambda: self._loaders["query_mean"]())
            return _unit(vectors - self.settings["lam"] * mean)
        if self.kind == "dba":
            return vectors
        w = np.full((len(vectors), 1), -self.settings["w"], np.float32)
        return np.ascontiguousarray(np.hstack([vectors, w]), dtype=np.float32)


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


# -- fitting a leg's map against a gallery, cached per gallery and catalog generation -------------------------

_FITTED_LOCK = threading.Lock()


def adapt_leg(
    leg: Leg,
    post: dict | None,
    vectors: np.ndarray,
    projection,
    gallery,
    collection: str,
    query_modality: str,
) -> tuple[np.ndarray, object]:
    """A leg's search vectors and gallery map once its peers are applied: an adapted leg (dba, center) gets its
    fitted map, and a ``nnn`` post-step wraps the leg's map into the one-extra-dimension map."""

    coll = gallery_collection(leg, collection)
    bank_collection = _COLLECTION_OF.get(query_modality, collection)
    base = projection
    if leg.transform == "adapt":
        settings = {k: v for k, v in leg.params.items() if k != "kind"}
        kind, dim = leg.params["kind"], vectors.shape[1]
        loaders = {
            "gallery": lambda: gallery.vectors(coll)[1],
            "gallery_mean": lambda: _kept_mean(gallery, coll, kind),
            "query_mean": lambda: _kept_mean(gallery, bank_collection, kind),
        }
        key = (kind, coll, bank_collection, json.dumps(settings, sort_keys=True))
        base = fitted(gallery, coll, key, lambda progress: PeerMap(kind, settings, None, dim, loaders).prepared())
        vectors = base.query(vectors)
    if post is not None and post["kind"] == "nnn":
        settings = {"k": post["k"], "bank": bank_collection}  # in the fingerprint: one derived collection per bank
        loaders = {"bank": lambda: _bank_vectors(gallery, bank_collection, "nnn")}
        key = ("nnn", coll, bank_collection, post["k"], _fingerprint(base))
        out_dim = vectors.shape[1] + 1
        nnn = fitted(gallery, coll, key, lambda progress: PeerMap("nnn", settings, base, out_dim, loaders))
        vectors = np.hstack([vectors, np.full((len(vectors), 1), -post["w"], np.float32)])
        return np.ascontiguousarray(vectors, np.float32), nnn
    return vectors, base


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


# -- what eval and tune measure ------------------------------------------------------------------------------


def eval_modes(task: str) -> dict[str, tuple[Mode, str]]:
    """The peers and a few compositions ``cgx eval`` measures beside the project's own modes (all label-free)."""
    from crossgap_index.search.modes import resolve_mode

    imagenet = {"vocabulary": "imagenet"}
    modes = {
        "aqe": (resolve_mode("aqe"), "alpha query expansion: query + its top-n weighted by sim^alpha, searched again"),
        "dba": (resolve_mode("dba"), "database-side augmentation: each gallery vector averaged with its top-n"),
        "nnn": (resolve_mode("nnn"), "nearest neighbor normalization: q.g - w * mean top-k bank similarity of g"),
        "qbnorm": (resolve_mode("qbnorm"), "QB-Norm, dynamic inverted softmax over the top-K"),
        "center": (resolve_mode("center"), "each modality's mean removed (GR-CLIP, lam = 1)"),
        "center-dn": (resolve_mode("center", peer={"lam": 0.25}), "a quarter of the mean removed (DN, lam = 0.25)"),
        "dba+aqe": (resolve_mode("dba+aqe"), "DBA gallery, then alpha query expansion"),
        "span-imagenet+aqe": (resolve_mode("span+aqe", projection=imagenet), "span over ImageNet names, then aqe"),
        "span-imagenet+nnn": (resolve_mode("span+nnn", projection=imagenet), "span over ImageNet names, then nnn"),
        "span-imagenet+qbnorm": (
            resolve_mode("span+qbnorm", projection=imagenet),
            "span over ImageNet names, then qbnorm",
        ),
    }
    return modes


def tune_candidates(base_modes: Sequence[tuple[str, Mode]] = ()) -> list[tuple[str, Mode]]:
    """Candidates for ``cgx tune``: every peer on a small grid of its settings, and each given one-leg base
    mode (e.g. the tuner's best projection and inversion) followed by each post-step at its defaults."""
    from crossgap_index.search.modes import resolve_mode

    out: list[tuple[str, Mode]] = []
    for n in (2, 3, 5, 10):
        out.append((f"aqe[n={n}]", resolve_mode("aqe", peer={"n": n})))
        out.append((f"dba[n={n}]", resolve_mode("dba", peer={"n": n})))
    for k in (16, 64, 128):
        out.append((f"nnn[k={k}]", resolve_mode("nnn", peer={"k": k})))
    out.append(("qbnorm", resolve_mode("qbnorm")))
    for lam in (0.25, 1.0):
        out.append((f"center[lam={lam}]", resolve_mode("center", peer={"lam": lam})))
    return out + post_candidates(base_modes)


def post_candidates(base_modes: Sequence[tuple[str, Mode]]) -> list[tuple[str, Mode]]:
    """Each given one-leg mode (fusions and modes with a post-step are skipped) followed by each post-step."""
    out = []
    for label, base in base_modes:
        if len(base.legs) != 1 or base.post is not None:
            continue
        for post in POST_STEPS:
            out.append((f"{label}+{post}", peer_mode(f"{base.name}+{post}", base, post, {})))
    return out
