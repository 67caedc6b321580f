"""The inversion cache (cache.sqlite) answers and stores whole batches: what the search layer asks of it. Its
per-key ``get``/``put`` are the oracle; a cache that cannot be used skips itself and never fails a search."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np

from crossgap_index.store.cache import CACHE_NAME, InversionCache


def _vectors(n: int, dim: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"key-{i}": rng.standard_normal(dim).astype(np.float32) for i in range(n)}


def test_a_batch_round_trips_across_many_select_chunks(tmp_path):
    items = _vectors(1_234)  # more keys than one SELECT binds
    cache = InversionCache(tmp_path, writable=True)
    cache.put_many(items)
    asked = [*items, "absent", "key-3"]  # a missing key and a repeated one
    found = cache.get_many(asked)
    assert set(found) == set(items)
    for key, vector in items.items():
        np.testing.assert_array_equal(found[key], vector)
        np.testing.assert_array_equal(cache.get(key), found[key])  # the one-key path agrees
    cache.close()
    reopened = InversionCache(tmp_path, writable=False)  # another process, read-only: the rows were committed
    assert set(reopened.get_many(list(items))) == set(items)
    reopened.close()


def test_put_many_replaces_a_stored_vector(tmp_path):
    cache = InversionCache(tmp_path, writable=True)
    cache.put("k", np.zeros(4, np.float32))
    cache.put_many({"k": np.ones(4, np.float32)})
    np.testing.assert_array_equal(cache.get_many(["k"])["k"], np.ones(4, np.float32))
    cache.close()


def test_a_read_only_cache_writes_nothing(tmp_path):
    cache = InversionCache(tmp_path, writable=False)
    cache.put_many(_vectors(3))
    assert cache.get_many(["key-0"]) == {}
    assert not (tmp_path / CACHE_NAME).exists()


def test_a_damaged_cache_file_is_skipped(tmp_path: Path):
    (tmp_path / CACHE_NAME).write_bytes(b"not a database" * 100)
    cache = InversionCache(tmp_path, writable=True)
    cache.put_many(_vectors(3))  # no exception: the cache is an optimisation
    assert cache.get_many(["key-0", "key-1"]) == {}
    cache.close()


def test_a_failing_batch_write_keeps_none_of_it(tmp_path):
    cache = InversionCache(tmp_path, writable=True)
    cache.put_many({"a": np.ones(2, np.float32)})
    blocker = sqlite3.connect(tmp_path / CACHE_NAME, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")  # another writer holds the file: the batch cannot commit
    try:
        cache._connection().execute("PRAGMA busy_timeout = 0")
        cache.put_many(_vectors(5))
    finally:
        blocker.rollback()
        blocker.close()
    assert set(cache.get_many(["a", *_vectors(5)])) == {"a"}
    cache.close()
