"""`auto`'s factory rule (store/vectors.py): which FAISS index a collection of n vectors gets, and when its
growth makes the store rebuild it."""

from __future__ import annotations

import numpy as np
import pytest

from crossgap_index.store import vectors as vectors_module
from crossgap_index.store.vectors import COMPRESSED_ABOVE, EXACT_SEARCH_LIMIT, IVF_FLAT_LISTS, VectorIndex, auto_factory


@pytest.mark.parametrize(
    ("n", "factory"),
    [
        (1, "Flat"),
        (EXACT_SEARCH_LIMIT, "Flat"),
        (EXACT_SEARCH_LIMIT + 1, "IVF1024,Flat"),
        (200_000, "IVF1024,Flat"),
        (1_000_000, "IVF1024,Flat"),
        (COMPRESSED_ABOVE, "IVF1024,Flat"),
        (COMPRESSED_ABOVE + 1, "IVF1024_HNSW32,SQ8"),
        (10_000_000, "IVF4096_HNSW32,SQ8"),
        (100_000_000, "IVF8192_HNSW32,SQ8"),
    ],
)
def test_auto_picks_exact_then_a_fixed_ivf_flat_then_compressed_codes(n, factory):
    assert auto_factory(n) == factory


def lists(factory: str) -> int:
    return int(factory.split(",")[0].removeprefix("IVF").removesuffix("_HNSW32")) if factory != "Flat" else 0


def test_auto_never_gives_a_larger_collection_fewer_lists():
    sizes = np.unique(np.geomspace(1, 1e9, 400).astype(np.int64))
    counts = [lists(auto_factory(int(n))) for n in sizes]
    assert counts == sorted(counts)
    assert lists(auto_factory(COMPRESSED_ABOVE + 1)) == IVF_FLAT_LISTS  # the compressed tier starts where IVF-Flat ends


def test_an_ivf_flat_auto_index_is_not_rebuilt_as_it_grows_within_its_tier(monkeypatch):
    """Growing from just above the exact limit to the compressed one keeps the trained lists (the rule's
    lists do not depend on n there); crossing into the compressed tier asks for a rebuild."""
    monkeypatch.setattr(vectors_module, "EXACT_SEARCH_LIMIT", 1_500)
    monkeypatch.setattr(vectors_module, "COMPRESSED_ABOVE", 6_000)
    rng = np.random.default_rng(7)
    rows = rng.standard_normal((6_001, 8)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ids = np.arange(1, len(rows) + 1, dtype=np.int64)
    index = VectorIndex(8, "auto")
    index.build(ids[:2_000], rows[:2_000])
    assert index.resolved_factory == f"IVF{IVF_FLAT_LISTS},Flat" and not index.needs_rebuild()
    index.add(ids[2_000:6_000], rows[2_000:6_000])
    assert index.ntotal == 6_000 and not index.needs_rebuild()
    index.add(ids[6_000:], rows[6_000:])
    assert index.needs_rebuild()  # 6,001 vectors: the compressed tier's IVF{c}_HNSW32,SQ8
