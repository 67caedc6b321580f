"""The HNSW coarse quantizer of auto's compressed tier assigns rows with COARSE_EF_SEARCH, not FAISS's 16,
and keeps it through a save and a memory-mapped load (queries search it with the same setting)."""

from __future__ import annotations

import faiss
import numpy as np

from crossgap_index.store.vectors import COARSE_EF_SEARCH, VectorIndex, file_record

DIM = 32


def coarse_ef(index: faiss.Index) -> int:
    return int(faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch)


def test_hnsw_coarse_quantizer_adds_and_searches_at_coarse_ef_search(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, 3001, dtype=np.int64)
    index = VectorIndex(DIM, "IVF32_HNSW32,SQ8")
    index.build_chunked(3000, lambda: iter([(ids[:1500], vectors[:1500]), (ids[1500:], vectors[1500:])]))
    assert COARSE_EF_SEARCH > 16 and coarse_ef(index.index) == COARSE_EF_SEARCH
    # each row sits in the list of its nearest centroid (FAISS's IVF lists hold what the quantizer chose)
    ivf = faiss.extract_index_ivf(index.index)
    centroids = faiss.downcast_index(ivf.quantizer).storage.reconstruct_n(0, ivf.nlist)
    nearest = np.argmax(vectors @ centroids.T, axis=1)
    lists = np.empty(3000, np.int64)
    for number in range(ivf.nlist):
        held = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), ivf.invlists.list_size(number))
        lists[faiss.vector_to_array(index.index.id_map)[held] - 1] = number
    assert np.mean(lists == nearest) >= 0.99
    record = index.save(tmp_path / "image.faiss")
    assert record == file_record(tmp_path / "image.faiss")
    loaded = VectorIndex.load(tmp_path / "image.faiss", DIM, "IVF32_HNSW32,SQ8", record, count=3000)
    assert loaded is not None and coarse_ef(loaded.index) == COARSE_EF_SEARCH


def test_search_parameters_set_while_the_file_loads_in_the_background_are_kept(tmp_path, monkeypatch):
    from crossgap_index.store import vectors as vectors_module

    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((600, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1, 601, dtype=np.int64)
    index = VectorIndex(DIM, "IVF16,Flat")
    index.build(ids, vectors)
    record = index.save(tmp_path / "image.faiss")
    monkeypatch.setattr(vectors_module, "LAZY_VERIFY_BYTES", 0)  # every file counts as large: loaded in background
    loaded = VectorIndex.load(tmp_path / "image.faiss", DIM, "IVF16,Flat", record, count=600, fallback=lambda: None)
    assert loaded is not None
    loaded.search_params = "nprobe=5"  # may land before the load finishes
    assert faiss.extract_index_ivf(loaded.index).nprobe == 5 and loaded.search_params == "nprobe=5"
