"""One mode on one task's features: its metrics through the serving engine, its cost per query, and whether
its vocabulary came from the evaluated labels. ``cgx eval`` and ``cgx tune`` both measure with these."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from crossgap_index.evaluation.features import FeatureSet, MemoryCache, take_queries
from crossgap_index.evaluation.metrics import RetrievalMetrics, retrieval_metrics
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.modes import Mode
from crossgap_index.search.run import Queries, run_mode
from crossgap_index.search.transforms import ModelTransformer

COST_BATCH = 32  # the second batch size every mode's cost is measured at (the first is 1)


def measure_mode(
    mode: Mode,
    features: FeatureSet,
    transformer: ModelTransformer,
    collection: str,
    extra_collections: dict[str, np.ndarray] | None = None,
) -> RetrievalMetrics:
    """Run ``mode`` for every query over the whole gallery (leave-one-out when queries are the gallery)
    and score each query's full ranking."""
    n_gallery = len(features.gallery)
    gallery = _gallery(features, collection, extra_collections)
    exclude = features.exclude_ids()
    k = n_gallery - (1 if exclude is not None else 0)
    results = run_mode(mode, features.queries, collection, k, gallery, transformer, exclude)
    scores = np.full((len(features.queries), n_gallery), -np.inf)
    for row, result in enumerate(results):
        scores[row, result.ranked.ids] = np.arange(len(result.ranked.ids), 0, -1)
    mask = np.eye(n_gallery, dtype=bool) if exclude is not None else None
    return retrieval_metrics(scores, features.query_labels, features.gallery_labels, mask)


def query_cost_ms(
    mode: Mode,
    features: FeatureSet,
    make_transformer: Callable[..., ModelTransformer],
    collection: str,
    extra_collections: dict[str, np.ndarray] | None = None,
    samples: int = 3,
    batch: int = 1,
    shared: InversionCosts | None = None,
) -> float:
    """Median milliseconds per query of the mode's work with ``batch`` queries run together, no cache
    (transform, ranking, fusion); a batch larger than the queries left repeats them (as distinct queries).

    ``shared``: the uncached inversions of the rounds' rows, timed once for every mode with that inversion (made
    by the same ``make_transformer``); a mode's round is then its inversions' time plus its own run with them
    cached (the same work, timed in two parts). None: every mode inverts its rounds itself."""
    gallery = _gallery(features, collection, extra_collections)
    transformer = make_transformer() if shared is None else make_transformer(shared.cache)
    run_mode(mode, take_queries(features.queries, [0]), collection, 10, gallery, transformer)  # warm-up: fits maps
    n = len(features.queries)
    times = []
    rounds = min(samples, n - 1) if batch == 1 else max(1, samples // 2)
    for r in range(rounds):
        rows = [1 + (r * batch + j) % max(n - 1, 1) for j in range(batch)] if n > 1 else [0] * batch
        queries = take_queries(features.queries, rows)
        inverting = 0.0 if shared is None else shared.seconds(mode, queries, collection, (batch, r))
        begin = time.perf_counter()
        run_mode(mode, queries, collection, 10, gallery, transformer)
        times.append((time.perf_counter() - begin + inverting) / batch)
    return float(np.median(times) * 1e3) if times else float("nan")


class InversionCosts:
    """The uncached time of each distinct inversion (OTI / OVI, warm-started or not) over each cost round's rows,
    timed once and shared by the modes that run it (cross and its fusions); the vectors go into ``cache``, where
    those modes' own runs find them."""

    def __init__(self, make_transformer: Callable[..., ModelTransformer]):
        self._make = make_transformer
        self.cache = MemoryCache()
        self._seconds: dict[tuple, float] = {}

    def seconds(self, mode: Mode, queries: Queries, collection: str, round_key: tuple[int, int]) -> float:
        """The summed uncached inversion time of ``mode``'s inverting legs over ``queries`` (round ``round_key``)."""
        total = 0.0
        for leg in {(leg.transform, leg.inversion()): leg for leg in mode.legs if leg.inverts}.values():
            key = (leg.transform, leg.inversion(), round_key)
            if key not in self._seconds:
                fresh = MemoryCache()  # empty: the inversion runs, timed, and its vectors are kept
                transformer = self._make(fresh)
                begin = time.perf_counter()
                transformer.search_vectors(leg, queries, collection)
                self._seconds[key] = time.perf_counter() - begin
                self.cache.put_many(fresh.items())
            total += self._seconds[key]
        return total


def uses_labels(mode: Mode, class_names: Sequence[str]) -> bool:
    """Whether a projection leg of ``mode`` has a vocabulary holding one of the evaluated data's class names
    (case and spaces aside): concept or span over the labels. A fixed vocabulary (``imagenet``) is not
    chosen from the labels; a mode fitted or chosen on this data is flagged by the caller."""
    known = {" ".join(str(n).lower().split()) for n in class_names}
    for leg in mode.legs:
        vocabulary = leg.params.get("vocabulary") if leg.transform == "project" else None
        named = set() if vocabulary is None or isinstance(vocabulary, str) else set(vocabulary)
        if known & {" ".join(str(n).lower().split()) for n in named}:
            return True
    return False


def _gallery(features: FeatureSet, collection: str, extra: dict[str, np.ndarray] | None) -> MatrixGallery:
    """The task's gallery as ``collection``, with precomputed views of it (an inverted gallery) beside it."""
    ids = np.arange(len(features.gallery))
    collections = {collection: (ids, features.gallery)}
    for name, vectors in (extra or {}).items():
        collections[name] = (ids, vectors)
    return MatrixGallery(collections)
