"""A schema-1 catalog (every vector a BLOB in its row, written with the previous release's schema) behind the
catalog's read-only legacy adapter: read as it is, refused for writes, and moved into shards once by
``migrate_if_old``, after which the same queries give the same answers from the shards."""

from __future__ import annotations

import sqlite3
from contextlib import nullcontext

import numpy as np
import pytest

from crossgap_index.errors import StoreError
from crossgap_index.store.catalog import Catalog
from tests.support.legacy_index import LEGACY_SCHEMA

DIM = 8
ROWS = 1_200  # over the 999-parameter limit set below: the id-list queries run in chunks here too


@pytest.fixture
def legacy_catalog(tmp_path):
    vectors = np.random.default_rng(1).standard_normal((ROWS, DIM)).astype(np.float32)
    path = tmp_path / "catalog.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(LEGACY_SCHEMA)
    conn.executemany(
        "INSERT INTO items (id, modality, path, content_hash, size, mtime_ns, vector) "
        "VALUES (?, 'image', ?, ?, 1, 1, ?)",
        [(i + 1, f"/v/{i + 1}.png", f"{i + 1:032x}", v.tobytes()) for i, v in enumerate(vectors)],
    )
    conn.executemany(
        "INSERT INTO derived_vectors (kind, item_id, vector) VALUES ('image-oti', ?, ?)",
        [(i + 1, (-v).tobytes()) for i, v in enumerate(vectors[::2])],
    )
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("generation", "4")])
    conn.commit()
    conn.close()
    return path, vectors


def _answers(catalog: Catalog) -> tuple:
    catalog.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    ids, vectors = catalog.ids_and_vectors("image", DIM)
    mask, found = catalog.vectors_found(list(range(ROWS + 5, 0, -1)), DIM)
    derived_ids, derived = catalog.derived_ids_and_vectors("image-oti", DIM)
    return ids.tolist(), vectors, mask.tolist(), found, derived_ids.tolist(), derived, catalog.stored_dim()


def test_a_schema_1_catalog_reads_as_it_is_and_refuses_writes(legacy_catalog):
    path, vectors = legacy_catalog
    before = path.read_bytes()
    catalog = Catalog(path, readonly=True)
    try:
        assert catalog.legacy and not catalog.uses_shards() and catalog.shard_records() == []
        assert catalog.vector_dtype() == "float32" and catalog.generation == 4
        ids, stored, mask, found, derived_ids, derived, dim = _answers(catalog)
        assert ids == list(range(1, ROWS + 1)) and dim == DIM
        np.testing.assert_array_equal(stored, vectors)
        assert mask == [False] * 5 + [True] * ROWS
        np.testing.assert_array_equal(found, vectors[::-1])
        np.testing.assert_array_equal(derived, -vectors[::2])
        assert catalog.migrate_if_old(DIM, nullcontext) == 0  # read-only: served as it is
    finally:
        catalog.close()
    assert path.read_bytes() == before

    writable = Catalog(path)
    try:
        with pytest.raises(StoreError, match="written only after migrating"):
            writable.add_image("/v/new.png", "f" * 32, 1, 1, vectors[0])
    finally:
        writable.close()


def test_migration_on_a_writable_open_keeps_every_answer(legacy_catalog):
    path, _ = legacy_catalog
    catalog = Catalog(path, readonly=True)
    before = _answers(catalog)
    catalog.close()

    catalog = Catalog(path)
    try:
        held = []
        assert catalog.migrate_if_old(DIM, lambda: held.append(True) or nullcontext()) == ROWS + ROWS // 2
        assert held == [True]  # the move ran under the writer lock the caller handed in
        assert not catalog.legacy and catalog.uses_shards() and catalog.generation == 4
        after = _answers(catalog)
        assert [a for a in after if not isinstance(a, np.ndarray)] == [
            b for b in before if not isinstance(b, np.ndarray)
        ]
        for a, b in zip(after, before, strict=True):
            if isinstance(a, np.ndarray):
                np.testing.assert_array_equal(a, b)
        assert catalog.migrate_if_old(DIM, nullcontext) == 0  # once
        assert catalog.shard_problems(full=True) == []
    finally:
        catalog.close()
