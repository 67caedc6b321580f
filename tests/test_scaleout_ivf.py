"""Large-index build path: IVF trained on a sample, vectors added from SQLite a chunk at a time."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from crossgap_index.search.ranking import top_k
from crossgap_index.store.directory import Store
from crossgap_index.store.vectors import TRAIN_POINTS_PER_LIST, VectorIndex, gpu_count, training_sample


def clustered(rng: np.random.Generator, centers: np.ndarray, n: int, spread: float = 0.35) -> np.ndarray:
    """Unit vectors around random centres: neighbourhoods exist, so recall means something."""
    x = centers[rng.integers(0, len(centers), n)] + spread * rng.normal(size=(n, centers.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def chunked(ids: np.ndarray, vectors: np.ndarray, size: int):
    return lambda: ((ids[i : i + size], vectors[i : i + size]) for i in range(0, len(ids), size))


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat", "IVF16,SQ8"])
def test_chunked_build_equals_in_memory_build_when_the_sample_is_everything(factory):
    rng = np.random.default_rng(1)
    vectors = clustered(rng, rng.normal(size=(40, 16)).astype(np.float32), 3000)
    ids = rng.permutation(10_000)[:3000].astype(np.int64)
    oracle, streamed = VectorIndex(16, factory), VectorIndex(16, factory)
    oracle.build(ids, vectors)
    streamed.build_chunked(len(ids), chunked(ids, vectors, 512))  # 3000 < 256 * 16: trains on all rows
    queries = clustered(rng, rng.normal(size=(40, 16)).astype(np.float32), 25)
    expected, got = oracle.search(queries, 10), streamed.search(queries, 10)
    np.testing.assert_array_equal(got[1], expected[1])
    np.testing.assert_array_equal(got[0], expected[0])


def test_training_sample_takes_seeded_rows_across_uneven_chunks():
    vectors = np.arange(1000 * 4, dtype=np.float32).reshape(1000, 4)
    chunks = [vectors[a:b] for a, b in ((0, 7), (7, 400), (400, 401), (401, 1000))]
    sample = training_sample(((None, c) for c in chunks), 1000, 300)
    again = training_sample(((None, c) for c in chunks), 1000, 300)
    assert sample.shape == (300, 4) and np.array_equal(sample, again)
    rows = sample[:, 0].astype(int) // 4
    assert np.all(np.diff(rows) > 0)  # distinct rows, in stream order
    np.testing.assert_array_equal(sample, vectors[rows])
    assert training_sample(((None, c) for c in chunks), 1000, 5000).shape == (1000, 4)


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_ivf_recall_on_200k_vectors_trained_on_a_sample(tmp_path):
    """IVF256 over 200k clustered 32-d unit vectors: trained on TRAIN_POINTS_PER_LIST * 256 sampled rows,
    filled from SQLite in chunks; with the default re-scoring recall@10 against exact >= 0.99."""
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2000, 32)).astype(np.float32)
    vectors = clustered(rng, centers, 200_000)
    queries = clustered(rng, centers, 100)
    store = Store.create(tmp_path / "idx", "synthetic", 32, "IVF256,Flat")
    for i, vector in enumerate(vectors):
        store.catalog.add_image(f"/v/{i}", f"{i:032x}", 1, 1, vector)
    store.save()  # the FAISS index is rebuilt from the catalog here
    index = store.indexes["image"]
    assert index.ntotal == 200_000 and index.resolved_factory == "IVF256,Flat"
    assert TRAIN_POINTS_PER_LIST * 256 < 200_000  # so the index was trained on a sample
    ids, _ = store.ids_and_vectors("image")
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    found = [top_k(store, "image", q, 10).ids for q in queries]
    recall = np.mean([len(np.intersect1d(f, e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.99, recall
    store.close()


def test_search_device_is_decided_at_open():
    index = VectorIndex(8, "Flat")
    assert index.use_gpu == (gpu_count() > 0)  # this machine: faiss-cpu, no GPU -> CPU search
