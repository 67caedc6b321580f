"""Every catalog query that takes a list of ids (or paths) answers for any number of them: the one chunking
helper keeps each ``IN (...)`` under SQLite's limit on bound parameters, here set to 999 as older SQLite
builds have it. Each answer is checked against the same question asked one id at a time."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from crossgap_index.store.directory import Store

DIM = 16
ROWS = 2_500  # over twice the limit: three chunks


@pytest.fixture
def store(tmp_path):
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat")
    vectors = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    ids = list(range(1, ROWS + 1))
    with store.writing():
        store.catalog.add_images([f"/v/{i}.png" for i in ids], [f"{i:032x}" for i in ids], vectors, ids)
        store.catalog.set_derived("image-oti", ids, vectors[::-1].copy())
        store.commit()
    store.catalog.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    yield store
    store.close()


def _one_at_a_time(method, ids, *args):
    """The oracle: the same method asked about a single id per call (never near the limit)."""
    return [method([i], *args) for i in ids]


def test_the_limit_is_real(store):
    marks = ",".join("?" * 1000)
    with pytest.raises(sqlite3.OperationalError, match="too many SQL variables"):
        store.catalog.conn.execute(f"SELECT id FROM items WHERE id IN ({marks})", list(range(1000))).fetchall()


def test_rows_and_stored_rows_and_hashes(store):
    catalog = store.catalog
    wanted = list(range(ROWS + 10, 0, -1))  # ten ids that have no row, then every row in reverse
    rows = catalog.rows(wanted)
    assert len(rows) == ROWS and rows == {k: v for d in _one_at_a_time(catalog.rows, wanted) for k, v in d.items()}
    assert catalog.stored_rows(wanted) == {
        k: v for d in _one_at_a_time(catalog.stored_rows, wanted) for k, v in d.items()
    }
    hashes = catalog.content_hashes_for(wanted)
    assert len(hashes) == ROWS and hashes[ROWS] == f"{ROWS:032x}"
    assert catalog.content_hashes_of(wanted[10:]) == [f"{i:032x}" for i in wanted[10:]]
    paths = [f"/v/{i}.png" for i in wanted]
    assert catalog.ids_of_paths(paths) == {p: (i, f"{i:032x}") for p, i in zip(paths, wanted, strict=True) if i <= ROWS}


@pytest.mark.parametrize("kind", [None, "image-oti"])
def test_vectors_of_many_ids(store, kind):
    catalog = store.catalog
    wanted = list(range(ROWS + 10, 0, -1))
    mask, vectors = catalog.vectors_found(wanted, DIM, kind)
    singles = [catalog.vectors_found([i], DIM, kind) for i in wanted]
    assert mask.tolist() == [bool(m[0]) for m, _ in singles]
    np.testing.assert_array_equal(vectors, np.concatenate([v for _, v in singles]))
    np.testing.assert_array_equal(catalog.vectors_for(wanted[10:], DIM, kind), vectors)


def test_derived_vectors_of_many_ids(store):
    catalog = store.catalog
    wanted = list(range(1, ROWS + 1))
    found = catalog.derived_for("image-oti", wanted)
    assert sorted(found) == wanted
    for i in (1, 999, 1000, ROWS):
        np.testing.assert_array_equal(found[i], catalog.derived_for("image-oti", [i])[i])
