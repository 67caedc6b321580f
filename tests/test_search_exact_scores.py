"""Search asks FAISS for k and trusts its scores only where they are exact (Flat, IVF-Flat over float32 shards);
everywhere else the candidates are re-scored from the shards, all of a batch's rows read in one pass. Both are
checked against the straightforward path: every query fetches 100 candidates and re-scores them on its own."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from crossgap_index.errors import StoreError
from crossgap_index.search.ranking import faiss_scores_exact, top_k_batch
from crossgap_index.store.directory import Store

DIM = 32
K = 10
EXACT = ["Flat", "IVF16,Flat", "IVF16_HNSW32,Flat"]
APPROXIMATE = ["SQ8", "PQ8x4", "IVF16,PQ8x4", "IVF16_HNSW32,SQ8", "HNSW32", "PCA16,IVF8,Flat"]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_store(path, factory: str, vector_dtype: str = "float32", n: int = 900) -> tuple[Store, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(factory.encode()))
    store = Store.create(path, "synthetic", DIM, factory, vector_dtype=vector_dtype)
    vectors = unit(rng, n)
    with store.writing():
        for i, v in enumerate(vectors):
            store.catalog.add_image(f"/v/{i}", f"{i:032x}", 1, 1, v)
        store.rebuild("image")
        store.save()
    assert store.indexes["image"].resolved_factory == factory  # trained, not standing in as Flat
    queries = vectors[rng.choice(n, 12, replace=False)] + 0.3 * unit(rng, 12)
    queries = np.concatenate([queries, queries[:3]])  # repeated queries share every candidate in the batch
    return store, (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def one_by_one(store: Store, queries: np.ndarray, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The straightforward path: each query fetches max(10k, 100) candidates and re-scores them alone."""
    scores, ids = store.search("image", queries, max(10 * k, 100))
    out = []
    for row, query in enumerate(queries):
        row_ids = ids[row][ids[row] >= 0]
        live, exact = store.exact_rerank("image", query, row_ids)
        row_ids = row_ids[live]
        order = np.argsort(-exact, kind="stable")
        out.append((row_ids[order][:k], exact[order][:k]))
    return out


@pytest.mark.parametrize("factory", EXACT)
def test_exact_factories_skip_rescoring_with_the_same_ids_and_scores(tmp_path, factory):
    store, queries = make_store(tmp_path / "idx", factory)
    assert faiss_scores_exact(store, "image")
    fast = top_k_batch(store, "image", queries, K)
    for ranked, (ids, scores) in zip(fast, one_by_one(store, queries, K), strict=True):
        np.testing.assert_array_equal(ranked.ids, ids)
        np.testing.assert_allclose(ranked.scores, scores, atol=1e-6, rtol=0)
    for ranked, solo in zip(fast, (top_k_batch(store, "image", q[None], K)[0] for q in queries), strict=True):
        np.testing.assert_array_equal(ranked.ids, solo.ids)  # batch = solo
    # it reads no shard: with the shard files gone it still answers, and the re-scoring path cannot
    for shard in (tmp_path / "idx" / "vectors").iterdir():
        shard.unlink()
    again = top_k_batch(store, "image", queries, K)
    assert all(np.array_equal(a.ids, b.ids) for a, b in zip(again, fast, strict=True))
    with pytest.raises(StoreError):
        top_k_batch(store, "image", queries, K, rescore=True)
    store.close()


@pytest.mark.slow  # a trained codebook per factory
@pytest.mark.parametrize("factory", APPROXIMATE)
def test_approximate_factories_are_rescored_with_unchanged_results(tmp_path, factory):
    store, queries = make_store(tmp_path / "idx", factory)
    assert not faiss_scores_exact(store, "image")
    batched = top_k_batch(store, "image", queries, K)
    for ranked, (ids, scores) in zip(batched, one_by_one(store, queries, K), strict=True):
        np.testing.assert_array_equal(ranked.ids, ids)
        np.testing.assert_allclose(ranked.scores, scores, atol=1e-6, rtol=0)
    store.close()


def test_float16_shards_are_the_reference_so_ivf_flat_is_rescored_from_them(tmp_path):
    store, queries = make_store(tmp_path / "idx", "IVF16,Flat", vector_dtype="float16")
    assert not faiss_scores_exact(store, "image")
    for ranked, (ids, scores) in zip(
        top_k_batch(store, "image", queries, K), one_by_one(store, queries, K), strict=True
    ):
        np.testing.assert_array_equal(ranked.ids, ids)
        np.testing.assert_allclose(ranked.scores, scores, atol=1e-6, rtol=0)
    store.close()


def test_an_empty_collection_and_an_empty_batch_rank_nothing(tmp_path):
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "SQ8")
    assert [len(r) for r in top_k_batch(store, "image", unit(np.random.default_rng(0), 2), K)] == [0, 0]
    assert top_k_batch(store, "image", np.zeros((0, DIM), np.float32), K, rescore=True) == []
    store.close()


def test_candidates_another_process_removed_are_dropped_from_the_batched_rescoring(tmp_path):
    store, queries = make_store(tmp_path / "idx", "SQ8")
    before = top_k_batch(store, "image", queries, K)
    gone = sorted({int(r.ids[0]) for r in before} | {int(r.ids[3]) for r in before})
    writer = Store.open(tmp_path / "idx")
    with writer.writing():
        writer.remove(gone)
        writer.commit()
        writer.save()
    writer.close()
    # ``store`` still searches the FAISS index of its own state, which holds the removed ids
    assert set(gone) <= {int(i) for i in store.search("image", queries, 100)[1].ravel()}
    batched = top_k_batch(store, "image", queries, K)
    for ranked, (ids, scores) in zip(batched, one_by_one(store, queries, K), strict=True):
        np.testing.assert_array_equal(ranked.ids, ids)
        np.testing.assert_allclose(ranked.scores, scores, atol=1e-6, rtol=0)
        assert not set(ranked.ids.tolist()) & set(gone) and len(ranked) == K
    store.close()
