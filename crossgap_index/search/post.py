"""Query-time post-steps of a one-leg mode: alpha query expansion and QB-Norm's dynamic inverted softmax.

Both work in the leg's own space (its query vectors against its gallery side, projected or adapted), through
the engine's ranking function, so a served query and ``cgx eval`` run the same steps.

* ``aqe`` (Radenović et al., TPAMI 2019): q' = normalise(q + sum_{i<=n} max(s_i, 0)^alpha g_i) over the
  query's top-n, then a second search with q'.
* ``qbnorm`` (Bogolin et al., CVPR 2022): with a bank of reference queries B (search/peers.py says which),
  each gallery item j has the softmax denominator Z_j = sum_b exp(beta * b.g_j) (its own bank row left out)
  and the activation set A holds the items that are some bank query's top-1. A query whose top-1 is in A
  has its top ``depth`` re-scored by exp(beta * s_j) / Z_j, i.e. ordered by s_j - log(Z_j) / beta (the score
  shown); any other query keeps its ranking. Beyond ``depth`` the leg's own order continues.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from crossgap_index.search.fitting import FIT_BLOCK, FitProgress
from crossgap_index.search.peers import PeerBase, PeerLeg, RankFn, bank_of, fitted
from crossgap_index.search.projections import FeatureMap
from crossgap_index.search.ranking import Ranked

_CHUNK = 1024


class AlphaQueryExpansion(PeerBase):
    """aqe: a second search with each query expanded by its top-n neighbours in the leg's space."""

    vector_form = False

    def rank(
        self, rank: RankFn, vectors: np.ndarray, k: int, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> list[Ranked]:
        first = rank(vectors, int(leg.settings["n"]))
        expanded = np.array(vectors, np.float32)
        for row, ranked in enumerate(first):
            if len(ranked):
                neighbours = leg.gallery.vectors_of(leg.collection, ranked.ids, feature_map)
                weights = np.maximum(ranked.scores.astype(np.float32), 0.0) ** np.float32(leg.settings["alpha"])
                expanded[row] += weights @ neighbours
        norms = np.linalg.norm(expanded, axis=1, keepdims=True)
        return rank(np.ascontiguousarray(expanded / np.maximum(norms, 1e-12), dtype=np.float32), k)


class QueryBankNormalisation(PeerBase):
    """qbnorm: the leg's top ``depth`` re-scored by the dynamic inverted softmax (module docstring)."""

    vector_form = False

    def rank(
        self, rank: RankFn, vectors: np.ndarray, k: int, feature_map: FeatureMap | None, leg: PeerLeg
    ) -> list[Ranked]:
        return dynamic_inverted_softmax(rank, vectors, k, feature_map, leg)


@dataclass(frozen=True)
class BankStatistics:
    """QB-Norm's per-item statistics: ids sorted, log Z_j (beta included) and whether j is in the activation set."""

    ids: np.ndarray
    log_z: np.ndarray
    active: np.ndarray

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(log Z, active) per id; an id the statistics lack (removed by another process before they were
        fitted) is inactive with the largest log Z: ranked last in the head, and dropped from the hits."""
        if not len(self.ids):
            return np.zeros(len(ids)), np.zeros(len(ids), bool)
        positions = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        known = self.ids[positions] == ids
        worst = float(self.log_z[np.isfinite(self.log_z)].max(initial=0.0))
        return np.where(known, self.log_z[positions], worst), self.active[positions] & known


def bank_statistics_blocked(
    ids: np.ndarray,
    gallery: np.ndarray,
    bank_ids: np.ndarray,
    bank: np.ndarray,
    beta: float,
    progress: FitProgress | None = None,
) -> BankStatistics:
    """``bank_statistics`` in tiles of FIT_BLOCK bank rows x FIT_BLOCK gallery items: memory one tile, never a
    bank-block x gallery matrix; ``progress`` advances (and may stop the fit) after each block of bank rows."""
    ids = np.asarray(ids, np.int64)
    bank_ids = np.asarray(bank_ids, np.int64)
    log_z = np.full(len(ids), -np.inf)
    hits = np.zeros(len(ids), bool)
    for start in range(0, len(bank), FIT_BLOCK):
        rows, row_ids = bank[start : start + FIT_BLOCK], bank_ids[start : start + FIT_BLOCK]
        best = np.full(len(rows), -np.inf)
        best_at = np.zeros(len(rows), np.int64)
        for first in range(0, len(ids), FIT_BLOCK):
            sims = (rows @ gallery[first : first + FIT_BLOCK].T).astype(np.float64)
            sims[row_ids[:, None] == ids[None, first : first + FIT_BLOCK]] = -np.inf  # not its own query
            part = log_z[first : first + FIT_BLOCK]
            log_z[first : first + FIT_BLOCK] = np.logaddexp(part, _logsumexp_rows(beta * sims))
            top = np.argmax(sims, axis=1)
            value = sims[np.arange(len(sims)), top]
            better = value > best  # strictly: the first of equal maxima wins, as one argmax over the row would
            best[better], best_at[better] = value[better], first + top[better]
        hits[best_at[np.isfinite(best)]] = True
        if progress is not None:
            progress.advance(len(rows))
    order = np.argsort(ids, kind="stable")
    return BankStatistics(ids[order], log_z[order], hits[order])


def bank_statistics(ids: np.ndarray, gallery: np.ndarray, bank_ids: np.ndarray, bank: np.ndarray, beta: float):
    """log Z_j = logsumexp_b(beta * b.g_j) and the activation set, each bank row leaving out the item it is.
    The straightforward twin (a bank-chunk x gallery matrix) that ``bank_statistics_blocked`` is tested against."""
    ids = np.asarray(ids, np.int64)
    log_z = np.full(len(ids), -np.inf)
    hits = np.zeros(len(ids), bool)
    for start in range(0, len(bank), _CHUNK):
        sims = (bank[start : start + _CHUNK] @ gallery.T).astype(np.float64)
        sims[bank_ids[start : start + _CHUNK, None] == ids[None, :]] = -np.inf  # an item is not its own query
        log_z = np.logaddexp(log_z, _logsumexp_rows(beta * sims))
        best = np.argmax(sims, axis=1)
        hits[best[np.isfinite(sims[np.arange(len(sims)), best])]] = True
    order = np.argsort(ids, kind="stable")
    return BankStatistics(ids[order], log_z[order], hits[order])


def _logsumexp_rows(values: np.ndarray) -> np.ndarray:
    """log sum_b exp(values[b, j]) over rows b, for each column j (-inf where every value is -inf)."""
    top = values.max(axis=0)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.exp(values - safe).sum(axis=0))


def dynamic_inverted_softmax(
    rank: RankFn, vectors: np.ndarray, k: int, projection: FeatureMap | None, leg: PeerLeg
) -> list[Ranked]:
    """The leg's ranking with the top ``depth`` re-scored for queries whose top-1 is in the activation set."""
    beta, depth = float(leg.settings["beta"]), int(leg.settings["depth"])
    gallery, coll, bank_collection = leg.gallery, leg.collection, leg.bank
    key = ("qbnorm", coll, bank_collection, beta, None if projection is None else projection.fingerprint)

    def statistics(progress: FitProgress) -> BankStatistics:
        def fit() -> dict[str, np.ndarray]:
            stats = bank_statistics_blocked(*bank_of(gallery, projection, coll, bank_collection), beta, progress)
            return {"ids": stats.ids, "log_z": stats.log_z, "active": stats.active}

        return BankStatistics(**gallery.keep(f"{coll}@qbnorm-{_digest(key)}", fit))

    stats = fitted(gallery, coll, key, statistics, total=gallery.count(bank_collection))
    out = []
    for ranked in rank(vectors, max(k, depth)):
        head = Ranked(ranked.ids[:depth], ranked.scores[:depth])
        tail = Ranked(ranked.ids[depth:], ranked.scores[depth:])
        if len(head):
            log_z, active = stats.lookup(head.ids)
            if active[0]:
                scores = (head.scores.astype(np.float64) - log_z / beta).astype(np.float32)
                order = np.argsort(-scores, kind="stable")
                head = Ranked(head.ids[order], scores[order])
                floor = float(head.scores.min())
                tail = Ranked(tail.ids, (floor - np.arange(1, len(tail) + 1)).astype(np.float32))
        ids = np.concatenate([head.ids, tail.ids])[:k]
        out.append(Ranked(ids, np.concatenate([head.scores, tail.scores])[:k].astype(np.float32)))
    return out


def _digest(key: tuple) -> str:
    return hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
