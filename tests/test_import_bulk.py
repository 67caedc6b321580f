"""The import's fast paths against their straightforward twins: float16 rows kept as given when already
unit-norm (``unit_rows_as`` against ``unit_rows``), and the catalog rows of an .npy import written by one
INSERT ... SELECT over json_each (``add_imported`` against ``add_images``)."""

from __future__ import annotations

import numpy as np
import pytest

from crossgap_index.errors import InputFileError
from crossgap_index.ingest import embeddings as e
from crossgap_index.ingest import unit_rows as unit
from crossgap_index.store import catalog as catalog_module
from crossgap_index.store.directory import Store

DIM = 64
TOL = e.HALF_UNIT_TOLERANCE


def half_rows(n: int, seed: int, scales: np.ndarray) -> np.ndarray:
    """float16 rows whose norms are ``scales`` (as closely as float16 holds them)."""
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (v * scales[:, None]).astype(np.float16)


def oracle(vectors: np.ndarray, dtype) -> np.ndarray:
    """What the import stored before the fast path: unit float32 rows, cast to the shards' dtype."""
    return e.unit_rows(vectors, 0, "src").astype(dtype)


def test_half_norms_equal_float32_norms():
    v = half_rows(3000, 0, np.random.default_rng(1).uniform(0.01, 50, 3000).astype(np.float32))
    expected = np.linalg.norm(v.astype(np.float32), axis=1)
    np.testing.assert_allclose(unit._half_norms(v), expected, rtol=2e-6)


def test_unit_half_rows_are_kept_and_others_are_normalised_as_the_oracle_does():
    near = np.r_[np.ones(200), 1 + np.linspace(-0.9, 0.9, 200) * TOL].astype(np.float32)
    far = np.r_[1 + 3 * TOL, 1 - 3 * TOL, 1.01, 0.5, 7.0, 1e-3].astype(np.float32)
    v = half_rows(len(near) + len(far), 2, np.r_[near, far])
    norms = np.linalg.norm(v.astype(np.float32), axis=1)
    kept = np.abs(norms - 1) <= TOL
    assert kept[:200].all() and not kept[len(near) :].any()  # both kinds are really there
    original = v.copy()
    v.setflags(write=False)  # a read-only source (a mapped file) is copied, never written
    fast = e.unit_rows_as(v, np.float16, 0, "src")
    want = oracle(original, np.float16)
    assert fast.dtype == np.float16
    np.testing.assert_array_equal(fast[kept], original[kept])  # stored as given
    np.testing.assert_array_equal(fast[~kept], want[~kept])  # bit for bit the oracle's rows
    # a kept row differs from the oracle's by at most one float16 step per element
    step = np.spacing(np.abs(want[kept]).astype(np.float16)).astype(np.float32)
    assert (np.abs(fast[kept].astype(np.float32) - want[kept].astype(np.float32)) <= step).all()
    assert (np.abs(np.linalg.norm(fast.astype(np.float32), axis=1) - 1) <= TOL + 1e-4).all()


@pytest.mark.parametrize(("source", "shards"), [("float32", "float32"), ("float32", "float16"), ("float16", "float32")])
def test_other_dtype_pairings_equal_the_oracle(source, shards):
    v = half_rows(300, 3, np.random.default_rng(4).uniform(0.5, 2, 300).astype(np.float32)).astype(source)
    v[:100] = oracle(v[:100], np.float16).astype(source)  # some already unit
    np.testing.assert_array_equal(e.unit_rows_as(v, np.dtype(shards), 0, "src"), oracle(v, shards))


@pytest.mark.parametrize("bad", [0.0, np.inf, np.nan])
def test_zero_or_non_finite_half_rows_are_refused_as_by_the_oracle(bad):
    v = half_rows(50, 5, np.ones(50, np.float32))
    v[17] = bad
    with pytest.raises(InputFileError) as oracle_error:
        e.unit_rows(v, 1000, "src.npy")
    with pytest.raises(InputFileError) as fast_error:
        e.unit_rows_as(v, np.float16, 1000, "src.npy")
    assert (
        str(fast_error.value)
        == str(oracle_error.value)
        == ("src.npy: row 1017 is all zeros or holds a value that is not finite (inf, nan)")
    )


def _write(tmp_path, name: str, bulk: bool, dtype: str) -> tuple[list, list, dict]:
    vectors = half_rows(3000, 6, np.ones(3000, np.float32)).astype(dtype)
    store = Store.create(tmp_path / name, "synthetic", DIM, "Flat", vector_dtype=dtype)
    with store.writing():
        for first in range(0, 3000, 1000):  # three commits, as an import's batches
            ids = np.arange(first + 1, first + 1001, dtype=np.int64) * 7  # ids need not be consecutive
            chunk = vectors[first : first + 1000]
            if bulk:
                store.catalog.add_imported(ids, chunk, e.IMPORTED_PREFIX)
            else:
                store.catalog.add_images([None] * 1000, [e.imported_hash(int(i)) for i in ids], chunk, ids)
            store.commit()
    rows = store.catalog.conn.execute("SELECT * FROM items ORDER BY id").fetchall()
    records = store.catalog.shard_records()
    files = {p.name: p.read_bytes() for p in (tmp_path / name / "vectors").iterdir()}
    store.close()
    return rows, records, files


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_bulk_catalog_rows_equal_add_images_rows(tmp_path, monkeypatch, dtype):
    rows, records, files = _write(tmp_path, "slow", bulk=False, dtype=dtype)
    assert len(rows) == 3000 and rows[0][5] == "import:7"
    assert _write(tmp_path, "bulk", bulk=True, dtype=dtype) == (rows, records, files)
    monkeypatch.setattr(catalog_module, "_has_json_each", lambda: False)  # an SQLite without JSON functions
    assert _write(tmp_path, "fallback", bulk=True, dtype=dtype) == (rows, records, files)


def test_an_import_of_unit_half_rows_stores_them_unchanged(tmp_path, monkeypatch):
    """End to end: already-unit float16 rows land in the shards byte for byte; rows off unit are
    normalised; the catalog rows carry the imported hashes; re-importing changes nothing."""
    from crossgap_index import CrossGapIndex
    from tests.support.photos import MODEL

    monkeypatch.setattr(e, "BATCH_ROWS", 700)
    scales = np.ones(2000, np.float32)
    scales[::10] = 3.0
    v = half_rows(2000, 7, scales)
    np.save(tmp_path / "emb.npy", v)
    index = tmp_path / "idx"
    report = CrossGapIndex.import_embeddings(tmp_path / "emb.npy", index, MODEL)
    assert (report.added, report.unchanged) == (2000, 0)
    stored = np.frombuffer((index / "vectors" / "items-000000.f16").read_bytes(), np.float16).reshape(-1, DIM)
    np.testing.assert_array_equal(stored[scales == 1], v[scales == 1])
    np.testing.assert_array_equal(stored[scales != 1], oracle(v[scales != 1], np.float16))
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx.check(files=False).ok
        hashes = cgx._store.catalog.conn.execute("SELECT content_hash FROM items ORDER BY id").fetchall()
        assert [h for (h,) in hashes] == [e.imported_hash(i) for i in range(1, 2001)]
    again = CrossGapIndex.import_embeddings(tmp_path / "emb.npy", index, MODEL)  # rows without ids are new rows
    assert (again.added, again.unchanged) == (2000, 0)
