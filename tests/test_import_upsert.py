"""`cgx import` is an upsert keyed by id (or path): rows without ids are added after the largest id ever held,
changed rows replace the stored ones (their derived vectors dropped), identical rows change nothing, the same
id twice anywhere in one import is refused before a row is written, and ids are bounded; the summary counts
added / updated / unchanged as they are."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import StoreError
from crossgap_index.ingest import embeddings as embeddings_module
from crossgap_index.ingest.import_sources import MAX_IMPORT_ID
from crossgap_index.inversion import InversionConfig
from tests.support.photos import MODEL

DIM = 64
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def table(vectors: np.ndarray, **columns) -> pa.Table:
    return pa.table({"embedding": pa.array(list(vectors), pa.list_(pa.float32())), **columns})


def top_id(index, vector) -> int:
    with CrossGapIndex.open(index, readonly=True) as cgx:
        return cgx.search(vector=vector, k=1)[0].id


def stored_ids(index) -> list[int]:
    with sqlite3.connect(index / "catalog.sqlite") as conn:
        return [r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")]


def test_a_second_file_without_ids_is_added_after_the_first(tmp_path):
    a, b = rows(20, 1), rows(20, 2)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    index = tmp_path / "idx"
    assert "20 added" in cli("import", tmp_path / "a.npy", "--index", index, "--model", MODEL).stderr
    result = cli("import", tmp_path / "b.npy", "--index", index, "--model", MODEL)
    assert result.exit_code == 0 and "20 rows: 20 added, 0 updated, 0 unchanged" in result.stderr
    assert stored_ids(index) == list(range(1, 41))
    assert top_id(index, b[0]) == 21 and top_id(index, a[0]) == 1 and top_id(index, b[19]) == 40


def test_changed_rows_replace_the_stored_ones_and_identical_rows_change_nothing(tmp_path):
    index = tmp_path / "idx"
    old = rows(10, 3)
    ids = list(range(101, 111))
    pq.write_table(table(old, id=ids, caption=[f"c{i}" for i in ids]), tmp_path / "v1.parquet")
    assert cli("import", tmp_path / "v1.parquet", "--index", index, "--model", MODEL).exit_code == 0
    with CrossGapIndex.open(index) as cgx:
        cgx.invert_gallery(InversionConfig(oti_steps=2))
        assert cgx._store.catalog.derived_ids("image-oti") == set(ids)
    new = old.copy()
    new[:3] = rows(3, 4)  # three vectors change, one caption changes, six rows stay as they were
    captions = [f"c{i}" for i in ids]
    captions[5] = "renamed"
    pq.write_table(table(new, id=ids, caption=captions), tmp_path / "v2.parquet")
    result = cli("import", tmp_path / "v2.parquet", "--index", index, "--model", MODEL)
    assert result.exit_code == 0 and "10 rows: 0 added, 4 updated, 6 unchanged" in result.stderr
    for i in range(10):
        assert top_id(index, new[i]) == ids[i]
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx.check(files=False).ok
        np.testing.assert_allclose(cgx._store.catalog_vectors("image", np.array(ids)), new, atol=1e-6)
        assert cgx._store.catalog.derived_ids("image-oti") == set(ids[3:])  # the old vectors' OTI went with them
        assert cgx.ls("image")[5].text == "renamed"
    generation = json.loads((index / "manifest.json").read_text())["generation"]
    again = cli("import", tmp_path / "v2.parquet", "--index", index, "--model", MODEL)
    assert again.exit_code == 0 and "10 rows: 0 added, 0 updated, 10 unchanged" in again.stderr
    assert json.loads((index / "manifest.json").read_text())["generation"] == generation


def test_the_same_id_across_batches_or_files_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings_module, "BATCH_ROWS", 8)
    index = tmp_path / "idx"
    np.save(tmp_path / "seed.npy", rows(3, 5))
    assert cli("import", tmp_path / "seed.npy", "--index", index, "--model", MODEL).exit_code == 0
    ids = list(range(50, 70))
    ids[15] = 52  # row 16 (third batch) repeats row 3's id (first batch)
    pq.write_table(table(rows(20, 6), id=ids), tmp_path / "batches.parquet")
    result = cli("import", tmp_path / "batches.parquet", "--index", index, "--model", MODEL)
    assert result.exit_code == 1
    assert "id 52 is given to rows 3 and 16; each id may appear once in an import" in one_line_error(result.stderr)
    folder = tmp_path / "parts"
    folder.mkdir()
    pq.write_table(table(rows(5, 7), id=[7, 8, 9, 10, 11]), folder / "a.parquet")
    pq.write_table(table(rows(5, 8), id=[12, 13, 9, 14, 15]), folder / "b.parquet")
    across = cli("import", folder, "--index", index, "--model", MODEL)
    assert across.exit_code == 1 and "id 9 is given to rows 3 and 8" in one_line_error(across.stderr)
    assert stored_ids(index) == [1, 2, 3]


def test_a_folder_mixing_numbered_and_unnumbered_files_keeps_every_row(tmp_path):
    index = tmp_path / "idx"
    np.save(tmp_path / "seed.npy", rows(3, 9))
    assert cli("import", tmp_path / "seed.npy", "--index", index, "--model", MODEL).exit_code == 0
    folder = tmp_path / "parts"
    folder.mkdir()
    numbered, plain = rows(4, 10), rows(6, 11)
    pq.write_table(table(plain), folder / "a-plain.parquet")
    pq.write_table(table(numbered, id=[4, 5, 30, 31]), folder / "b-numbered.parquet")
    result = cli("import", folder, "--index", index, "--model", MODEL)
    assert result.exit_code == 0 and "10 rows: 10 added, 0 updated, 0 unchanged" in result.stderr
    assert stored_ids(index) == [1, 2, 3, 4, 5, 30, 31, *range(32, 38)]  # after every id the import names
    assert top_id(index, plain[0]) == 32 and top_id(index, numbered[2]) == 30


def test_rows_with_paths_but_no_ids_are_keyed_by_path(tmp_path):
    index = tmp_path / "idx"
    vectors = rows(6, 12)
    meta = tmp_path / "meta.jsonl"
    meta.write_text("".join(json.dumps({"path": f"/photos/{i}.jpg"}) + "\n" for i in range(6)))
    np.save(tmp_path / "a.npy", vectors)
    assert cli("import", tmp_path / "a.npy", "--meta", meta, "--index", index, "--model", MODEL).exit_code == 0
    vectors[2] = rows(1, 13)[0]
    np.save(tmp_path / "a.npy", vectors)
    result = cli("import", tmp_path / "a.npy", "--meta", meta, "--index", index, "--model", MODEL)
    assert result.exit_code == 0 and "6 rows: 0 added, 1 updated, 5 unchanged" in result.stderr
    assert stored_ids(index) == list(range(1, 7)) and top_id(index, vectors[2]) == 3
    meta.write_text("".join(json.dumps({"path": f"/photos/{i % 5}.jpg"}) + "\n" for i in range(6)))
    twice = cli("import", tmp_path / "a.npy", "--meta", meta, "--index", index, "--model", MODEL)
    assert twice.exit_code == 1 and "the same path is given to rows 1 and 6" in one_line_error(twice.stderr)


def test_an_interrupted_import_of_rows_without_ids_resumes_with_the_same_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings_module, "BATCH_ROWS", 10)
    vectors = rows(50, 14)
    np.save(tmp_path / "a.npy", vectors)
    index = tmp_path / "idx"
    np.save(tmp_path / "seed.npy", rows(2, 15))
    CrossGapIndex.import_embeddings(tmp_path / "seed.npy", index, MODEL)
    calls = []

    def stop_after_two_batches(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL, progress=stop_after_two_batches)
    assert stored_ids(index) == list(range(1, 23))
    report = CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL)
    assert (report.added, report.unchanged) == (30, 20)
    assert stored_ids(index) == list(range(1, 53)) and top_id(index, vectors[49]) == 52
    report = CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL)  # finished: run again, added again
    assert (report.added, report.unchanged) == (50, 0) and stored_ids(index)[-1] == 102


def test_an_interrupted_import_is_not_resumed_over_rows_written_since(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings_module, "BATCH_ROWS", 10)
    np.save(tmp_path / "a.npy", rows(50, 20))
    index = tmp_path / "idx"

    def stop_after_two_batches(done: int, total: int) -> None:
        if done == 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL, progress=stop_after_two_batches)
    pq.write_table(table(rows(2, 21), id=[30, 31]), tmp_path / "b.parquet")  # ids the resumed run would take
    assert CrossGapIndex.import_embeddings(tmp_path / "b.parquet", index, MODEL).added == 2
    report = CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL)
    assert (report.added, report.updated, report.unchanged) == (50, 0, 0)
    assert stored_ids(index) == [*range(1, 21), 30, 31, *range(32, 82)]
    with pytest.raises(KeyboardInterrupt):
        CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL, progress=stop_after_two_batches)
    with CrossGapIndex.open(index) as cgx:  # a build between the runs takes the next id: not taken over
        cgx.add_texts(["a text built between the runs"])
    report = CrossGapIndex.import_embeddings(tmp_path / "a.npy", index, MODEL)
    assert (report.added, report.updated, report.unchanged) == (50, 0, 0)
    assert len(stored_ids(index)) == 20 + 2 + 50 + 20 + 1 + 50


def test_ids_are_bounded_and_a_full_autoincrement_is_not_a_full_disk(tmp_path):
    index = tmp_path / "idx"
    for value, kind in ((MAX_IMPORT_ID + 1, pa.int64()), (2**63, pa.uint64()), (2**64 - 1, pa.uint64())):
        pq.write_table(table(rows(1, 16), id=pa.array([value], kind)), tmp_path / "big.parquet")
        result = cli("import", tmp_path / "big.parquet", "--index", index, "--model", MODEL)
        assert result.exit_code == 1
        assert f"ids must be integers 1..{MAX_IMPORT_ID} (2**53 - 1), found {value}" in one_line_error(result.stderr)
    pq.write_table(table(rows(1, 17), id=[MAX_IMPORT_ID]), tmp_path / "top.parquet")
    assert cli("import", tmp_path / "top.parquet", "--index", index, "--model", MODEL).exit_code == 0
    np.save(tmp_path / "plain.npy", rows(2, 18))
    over = cli("import", tmp_path / "plain.npy", "--index", index, "--model", MODEL)
    assert over.exit_code == 1 and "over the largest an import may use" in one_line_error(over.stderr)
    # an index an older release let hold id 2**63 - 1: SQLite's AUTOINCREMENT has no id left
    with sqlite3.connect(index / "catalog.sqlite") as conn:
        conn.execute("UPDATE items SET id = ?, content_hash = ?", (2**63 - 1, f"import:{2**63 - 1}"))
        conn.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'items'", (2**63 - 1,))
    with CrossGapIndex.open(index) as cgx, pytest.raises(StoreError) as caught:
        cgx.add_texts(["one more"])
    assert "holds id 2**63 - 1" in str(caught.value) and "the disk is not full" in str(caught.value)


def test_the_help_states_the_upsert_and_the_id_bound():
    text = " ".join(cli("import", "--help").output.split())
    assert "an upsert keyed by id" in text and "over 2**53 - 1" in text and "refused before anything" in text
