"""Building a FAISS index from a stream of (ids, vectors) chunks: how many rows train it, how its k-means runs,
how the rows are added; and the small facts about an index's type the store asks (its IVF, what it needs to
train). ``VectorIndex`` (store/vectors.py) builds through ``build_streamed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import faiss
import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.words import StageProgress

Chunks = Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]  # a fresh pass of (ids, vectors) chunks

# Training rows per IVF list (a seeded random sample of at most this many per list; k-means time is
# nlist x rows x d per iteration). The rule: fewer rows per list only where recall@10 stays within 0.001 of the
# larger samples' on the same vectors; 64 keeps a margin above FAISS's warning floor of 39. Measured
# (benchmarks/bench_train_floor.py, clustered 512-d vectors, 300 queries, recall@10 against exact top-10):
# 200k, IVF1024,Flat and IVF2048,Flat at 64, 100 and 256 rows per list: 1.000 at the default nprobe 32 for all
# (results/train-floor-ivf1024.md, train-floor-auto.md); 1M, IVF1024,Flat: 1.000 at nprobe 32 for 64 and 100,
# 0.999 and 0.997 at nprobe 2 (train-floor-1m-flat.md); 2M, IVF1024,Flat at 64: 1.000 at nprobe 2, 8 and 32
# (train-floor-2m.md). Recall is flat from 64 to 256 everywhere measured (no sharp optimum); 64 is 0.64x the
# k-means work of autofaiss's 100 for the same factory. IVF over 8-bit codes (auto above 2M, whose candidates are
# re-scored exactly from the shards) trains on the same 64 per list, as its 10M build did (results/store.md).
TRAIN_POINTS_PER_LIST = 64
TRAIN_POINTS_OTHER = 65_536  # trainable non-IVF factories (PQ, PCA, ...)
TRAIN_SEED = 1234
# efSearch of an HNSW coarse quantizer (auto's IVF{c}_HNSW32 above COMPRESSED_ABOVE): it picks the list each
# vector is added to, and a wrong list is never probed by the queries near it. FAISS's default of 16 put 3.4%
# of 10M clustered rows in a list other than their nearest centroid's, and recall@10 stayed at 0.949-0.951
# for nprobe 32 to 128 and 100 to 400 re-scored candidates; 64 finds the nearest centroid for 99.95% of them
# (benchmarks/results/store.md, "`auto`'s own factory at 10M"). Saved with the index: queries search it at 64 too.
COARSE_EF_SEARCH = 64


def min_training_vectors(index: faiss.Index) -> int:
    """Fewest vectors FAISS accepts to train ``index``: an IVF quantiser needs one per list, a product
    quantiser 2^nbits per sub-quantiser; 0 for indexes that need no training."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if inner.is_trained:
        return 0
    need = 1
    if isinstance(inner, faiss.IndexIVF):
        need = max(need, inner.nlist)
        inner = faiss.downcast_index(inner)
    pq = getattr(inner, "pq", None)
    if pq is not None:
        need = max(need, 1 << pq.nbits)
    return need


def unwrapped(index: faiss.Index) -> faiss.Index:
    """The index under any pre-transforms (PCA, OPQ, ...), downcast to its own type."""
    index = faiss.downcast_index(index)
    while isinstance(index, faiss.IndexPreTransform):
        index = faiss.downcast_index(index.index)
    return index


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IVF inside an IDMap2 (under pre-transforms), or None."""
    inner = unwrapped(index.index) if isinstance(index, faiss.IndexIDMap2) else unwrapped(index)
    return inner if isinstance(inner, faiss.IndexIVF) else None


def quiet_training(index: faiss.Index) -> None:
    """No k-means warnings on the user's terminal: FAISS prints one whenever it trains with fewer than
    ``min_points_per_centroid`` (39) rows per centroid, as small collections and the factory probe do. The
    threshold only gates that message (the clustering itself is the same), so it is lowered to 1."""
    inner = unwrapped(index.index) if isinstance(index, faiss.IndexIDMap2) else unwrapped(index)
    if isinstance(inner, faiss.IndexHNSW) and inner.storage is not None:
        inner = faiss.downcast_index(inner.storage)  # HNSW over PQ codes trains its storage's quantizer
    holders = [inner if isinstance(inner, faiss.IndexIVF) else None, getattr(inner, "pq", None)]
    holders.append(getattr(inner, "rq", None))  # residual quantizers (RQ, IVF-RQ)
    for holder in holders:
        if holder is not None:
            holder.cp.min_points_per_centroid = 1


def set_coarse_ef_search(index: faiss.Index) -> None:
    """COARSE_EF_SEARCH for an IVF index whose coarse quantizer is an HNSW graph (see the constant)."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return  # not an IVF index
    quantizer = faiss.downcast_index(ivf.quantizer)
    if isinstance(quantizer, faiss.IndexHNSW):
        quantizer.hnsw.efSearch = max(int(quantizer.hnsw.efSearch), COARSE_EF_SEARCH)


def flat_index(dim: int) -> faiss.Index:
    return faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)


def reserve(index: faiss.Index, n: int) -> None:
    """Give a flat index's code array its final size up front: growing it chunk by chunk (std::vector
    doubling) would briefly hold the old and the doubled array, up to 3x the vectors. Each add then
    resizes within this capacity (a std::vector keeps its capacity when resized down)."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexFlatCodes) and inner.ntotal == 0:
        inner.codes.resize(n * inner.code_size)


def training_size(index: faiss.Index, n: int) -> int:
    """How many rows train ``index``: TRAIN_POINTS_PER_LIST per IVF list, and for IVF over codes (which trains
    its codes too, e.g. SQ8's ranges) at least TRAIN_POINTS_OTHER; capped at ``n``."""
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexIVFFlat):
        return min(n, TRAIN_POINTS_PER_LIST * int(inner.nlist))
    if isinstance(inner, faiss.IndexIVF):
        return min(n, max(TRAIN_POINTS_PER_LIST * int(inner.nlist), TRAIN_POINTS_OTHER))
    return min(n, TRAIN_POINTS_OTHER)


def training_sample(chunks: Iterator[tuple[np.ndarray, np.ndarray]], n: int, size: int) -> np.ndarray:
    """``size`` of the ``n`` streamed rows, chosen uniformly at random (seeded), in stream order."""
    positions = np.arange(n) if size >= n else np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size, replace=False))
    sample: np.ndarray | None = None
    filled = start = 0
    for _, vectors in chunks:
        lo, hi = np.searchsorted(positions, [start, start + len(vectors)])
        if sample is None:
            sample = np.empty((len(positions), vectors.shape[1]), np.float32)
        sample[filled : filled + hi - lo] = vectors[positions[lo:hi] - start]
        filled += hi - lo
        start += len(vectors)
    if sample is None:
        raise StoreError("no vectors to train the index on")
    return sample[:filled]


def build_streamed(
    index: faiss.Index, dim: int, n: int, chunks: Chunks, progress: StageProgress | None = None
) -> faiss.Index:
    """``index`` (empty, IDMap2) trained on a random sample of the ``n`` streamed rows (all of them, in order,
    when the sample would be the whole set), then filled a chunk at a time; an exact ``Flat`` instead when
    there are too few rows to train it. Two passes over ``chunks``; memory: the sample or the index, not both
    plus a full copy of every vector. ``progress(phase, done, total)``: "train" (0, then all of the sample's
    rows), then "add" (rows added of ``n``)."""
    tell = progress or _silent
    if not index.is_trained:
        if n < min_training_vectors(index):
            index = flat_index(dim)
        else:
            size = training_size(index, n)
            tell("train", 0, size)
            try:
                index.train(training_sample(chunks(), n, size))
            except RuntimeError:
                index = flat_index(dim)
            tell("train", size, size)
    reserve(index, n)
    added = 0
    tell("add", 0, n)
    for ids, vectors in chunks() if n else ():
        index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids.astype(np.int64))
        added += len(ids)
        tell("add", added, n)
    return index


def _silent(phase: str, done: int, total: int) -> None:
    """No one asked for progress."""
