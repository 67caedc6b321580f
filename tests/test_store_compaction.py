"""Shard compaction (store/compact.py): removed items' rows leave the shards, and nothing else changes.

Searches answer the same ids and scores before and after (exact and re-scored factories, float32 and
float16 shards, the items' stream and a derived one); vectors/ takes fewer bytes; every new shard's crc32
is the one the catalog records; a real `cgx compact` killed (SIGKILL) at each point of the protocol leaves
an index that opens, verifies and answers the same, whose leftover files the next writer deletes; readers
of the same open index and of another one keep answering correctly while it runs; writers queue on the
lock; a read-only index is refused in one line; after a removal, shards at least half dead go by themselves.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import StoreError
from crossgap_index.store import catalog as catalog_module
from crossgap_index.store import compact as compact_module
from crossgap_index.store import shards as shards_module
from crossgap_index.store.compact import CRASH_ENV, shard_use
from crossgap_index.store.directory import Store
from crossgap_index.store.lock import IndexLock
from tests.support.cli import REPO

DIM = 16
runner = CliRunner()


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 64 rows, so a few hundred vectors span many shard files."""
    for module in (shards_module, catalog_module):
        monkeypatch.setattr(module, "SHARD_ROWS", 64)
    return 64


def make_index(path: Path, n: int, factory: str = "Flat", dtype: str = "float32", seed: int = 0) -> list[int]:
    """``n`` image vectors (committed in 4 batches, so appends cross shard ends) and an image-oti vector for each."""
    rng = np.random.default_rng(seed)
    store = Store.create(path, "synthetic", DIM, factory, vector_dtype=dtype)
    ids: list[int] = []
    with store.writing():
        for batch in np.array_split(np.arange(n), 4):
            vectors = unit(rng, len(batch))
            new = [
                store.catalog.add_image(f"/v/{i}", f"{i:032x}", 1, 1, v) for i, v in zip(batch, vectors, strict=True)
            ]
            store.add("image", new, vectors)
            store.catalog.set_derived("image-oti", new, unit(rng, len(batch)))
            store.commit()
            ids += new
        store.save()
    store.close()
    return ids


def remove(path: Path, ids: list[int]) -> None:
    with CrossGapIndex.open(path) as cgx:
        cgx.remove(ids)


def answers(path: Path, readonly: bool = True) -> dict:
    """What the index answers (ids and scores of 12 queries on both collections) and every live vector."""
    queries = unit(np.random.default_rng(99), 12)
    with CrossGapIndex.open(path, readonly=readonly) as cgx:
        store = cgx._store
        hits = [[(h.id, h.score) for h in cgx.search(vector=q, k=10)] for q in queries]
        vectors = {
            name: store.catalog_vectors(name, store.catalog.ids(name, derived=name == "image-oti"))
            for name in ("image", "image-oti")
        }
        return {"hits": hits, "vectors": vectors, "rebuilt": list(store.rebuilt), "generation": store.generation}


def assert_same(before: dict, after: dict) -> None:
    assert after["hits"] == before["hits"]  # ids and scores, exactly
    for name, vectors in before["vectors"].items():
        np.testing.assert_array_equal(after["vectors"][name], vectors)
    assert after["rebuilt"] == [] and after["generation"] == before["generation"]  # FAISS files still valid


def shard_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path / "vectors").iterdir())


def assert_checksums(path: Path) -> None:
    """Every shard file's committed bytes have the crc32 the catalog records, and check agrees."""
    with CrossGapIndex.open(path, readonly=True) as cgx:
        catalog = cgx._store.catalog
        shards = catalog.shards()
        for record in catalog.shard_records():
            data = shards.path(record.stream, record.number).read_bytes()[: record.rows * shards.row_bytes]
            assert len(data) == record.rows * shards.row_bytes and zlib.crc32(data) == record.crc32
        report = cgx.check(files=False)
        assert report.ok, report.problems


@pytest.mark.parametrize(("factory", "dtype"), [("Flat", "float32"), ("IVF4,Flat", "float16")])
def test_compaction_answers_the_same_with_fewer_bytes_and_recorded_checksums(tmp_path, small_shards, factory, dtype):
    index = tmp_path / "idx"
    ids = make_index(index, 400, factory, dtype)
    remove(index, ids[20:45] + ids[200:230])  # 25 and 30 of 64-row shards: below the automatic 0.5
    before = answers(index)
    bytes_before = shard_bytes(index)
    with CrossGapIndex.open(index) as cgx:
        report = cgx.compact(min_dead=0.2)
    assert report.rows_freed == 2 * 55 and report.bytes_after < report.bytes_before
    assert shard_bytes(index) == bytes_before - 2 * 55 * DIM * (4 if dtype == "float32" else 2)
    assert_same(before, answers(index))
    assert_checksums(index)
    with CrossGapIndex.open(index) as cgx:  # nothing left to compact at 0.2; appends land after the new shards
        assert cgx.compact(min_dead=0.2).compacted == []
        store = cgx._store
        extra = unit(np.random.default_rng(5), 100)
        with store.writing():
            new = [store.catalog.add_image(f"/w/{i}", f"w{i:031x}", 1, 1, v) for i, v in enumerate(extra)]
            store.add("image", new, extra)
            store.save()
        got = store.catalog_vectors("image", new)
        np.testing.assert_array_equal(got, extra.astype(dtype).astype(np.float32))
        assert cgx.search(vector=extra[7], k=1)[0].id == new[7]
    assert_checksums(index)


def test_a_removal_compacts_shards_at_least_half_dead_by_itself(tmp_path, small_shards):
    index = tmp_path / "idx"
    ids = make_index(index, 256)  # 4 full shards per stream
    remove(index, ids[0:20])  # 31% dead: stays
    names = sorted(p.name for p in (index / "vectors").iterdir())
    assert names == [f"{s}-{n:06d}.f32" for s in ("image-oti", "items") for n in range(4)]
    before = answers(index)["vectors"]
    remove(index, ids[64:100])  # shard 1: 56% dead: compacted, with the derived stream's shard 1
    after = answers(index)
    keep = np.isin(ids[20:], ids[64:100], invert=True)
    for name, vectors in after["vectors"].items():  # the live rows kept their vectors, bit for bit
        np.testing.assert_array_equal(vectors, before[name][keep])
    assert after["rebuilt"] == []
    names = sorted(p.name for p in (index / "vectors").iterdir())
    assert "items-000001.f32" not in names and "items-000004.f32" in names and "items-000000.f32" in names
    assert "image-oti-000001.f32" not in names and "image-oti-000004.f32" in names
    assert_checksums(index)


def test_a_fully_dead_stream_keeps_its_shard_numbers_growing(tmp_path, small_shards):
    index = tmp_path / "idx"
    ids = make_index(index, 100)  # shards 0 (64) and 1 (36)
    remove(index, ids)  # every row dead: both compacted away; an empty shard 2 keeps the highest number
    assert sorted(p.name for p in (index / "vectors").glob("items-*")) == ["items-000002.f32"]
    with CrossGapIndex.open(index) as cgx:
        store = cgx._store
        vector = unit(np.random.default_rng(3), 1)
        with store.writing():
            new = store.catalog.add_image("/again", "a" * 32, 1, 1, vector[0])
            store.add("image", [new], vector)
            store.save()
        assert store.catalog.conn.execute("SELECT slot FROM items WHERE id = ?", (new,)).fetchone()[0] == 2 * 64
        assert cgx.search(vector=vector[0], k=1)[0].id == new
    assert_checksums(index)


KILL_POINTS = ["writing", "written", "committed", "deleting"]


@pytest.mark.slow
@pytest.mark.parametrize("point", KILL_POINTS)
def test_cgx_compact_killed_at_each_point_leaves_an_index_that_answers_the_same(tmp_path, point):
    index = tmp_path / "idx"
    ids = make_index(index, 300, "IVF4,Flat")  # one shard per stream (real shard size): both get compacted
    remove(index, ids[::3])
    before = answers(index)
    records_before = answers_records(index)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", CRASH_ENV: point}
    done = subprocess.run(
        [sys.executable, "-m", "crossgap_index", "compact", "--index", str(index)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -9, done.stderr  # killed by SIGKILL at that point
    names = set(os.listdir(index / "vectors"))
    committed = point in ("committed", "deleting")
    assert (answers_records(index) != records_before) == committed
    assert_same(before, answers(index))  # read-only: as found, leftovers and all
    assert {"items-000001.f32", "image-oti-000001.f32"} & names  # a new shard file was left either way
    with CrossGapIndex.open(index) as cgx:  # a writable open deletes what no record names
        recorded = {
            cgx._store.catalog.shards().path(r.stream, r.number).name for r in cgx._store.catalog.shard_records()
        }
    assert set(os.listdir(index / "vectors")) == recorded
    assert_same(before, answers(index))
    assert_checksums(index)
    again = subprocess.run(
        [sys.executable, "-m", "crossgap_index", "compact", "--index", str(index)],
        env={**env, CRASH_ENV: ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert ("nothing to compact" in again.stdout) == committed, again.stdout
    assert "compacting items" in again.stderr or committed  # progress on stderr
    assert_same(before, answers(index))
    assert_checksums(index)


def answers_records(index: Path) -> list:
    with CrossGapIndex.open(index, readonly=True) as cgx:
        return cgx._store.catalog.shard_records()


def test_readers_keep_answering_while_compaction_runs(tmp_path, small_shards):
    index = tmp_path / "idx"
    ids = make_index(index, 600, "IVF4,Flat")  # re-scored from the shards: every search reads them
    remove(index, [i for n, i in enumerate(ids) if n % 5 < 2])  # 40% of every shard
    expected = answers(index)["hits"]
    queries = unit(np.random.default_rng(99), 12)
    writer = CrossGapIndex.open(index)
    other = CrossGapIndex.open(index, readonly=True)  # its own Store and lock: as another process would be
    errors: list[BaseException] = []
    stop = threading.Event()
    rounds = [0, 0, 0]

    def read(n: int, cgx: CrossGapIndex) -> None:
        try:
            while not stop.is_set():
                got = [[(h.id, h.score) for h in cgx.search(vector=q, k=10)] for q in queries]
                assert got == expected
                rounds[n] += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            stop.set()

    def wait_for_rounds(least: list[int]) -> None:
        while not stop.is_set() and any(r < w for r, w in zip(rounds, least, strict=True)):
            time.sleep(0.005)

    readers = [threading.Thread(target=read, args=(n, cgx)) for n, cgx in enumerate((writer, writer, other))]
    for thread in readers:
        thread.start()
    try:
        wait_for_rounds([1, 1, 1])  # every reader is searching before the compaction starts
        report = writer.compact(min_dead=0.2)
        wait_for_rounds([r + 1 for r in rounds])  # and after it ends
    finally:
        stop.set()
        for thread in readers:
            thread.join()
    assert report.compacted and not errors, errors
    writer.close()
    other.close()
    assert_checksums(index)


def test_a_reader_whose_slots_moved_under_it_reads_them_again(tmp_path, small_shards):
    """The race a reader in another process can meet: it read old slots, then a compaction committed and
    deleted the old shard before its read. Made deterministic: the compaction runs between the two steps."""
    index = tmp_path / "idx"
    ids = make_index(index, 200)
    remove(index, ids[:30])
    reader = CrossGapIndex.open(index, readonly=True)
    live = reader._store.catalog.ids("image")
    truth = reader._store.catalog_vectors("image", live)
    shards = reader._store.catalog.shards()
    gather, calls = shards.gather, []

    def gather_after_a_compaction(stream, slots):
        if not calls:
            with CrossGapIndex.open(index) as writer:
                assert writer.compact(min_dead=0.2).compacted
        calls.append(1)
        return gather(stream, slots)

    shards.gather = gather_after_a_compaction
    np.testing.assert_array_equal(reader._store.catalog_vectors("image", live), truth)
    assert len(calls) == 2  # the first read met the missing shard; the second read the moved slots
    remove(index, ids[64:84])  # and the chunked reads of exports and rebuilds
    live = reader._store.catalog.ids("image")
    truth, calls[:] = reader._store.catalog_vectors("image", live), []
    chunks = list(reader._store.catalog.vector_chunks("image", False, DIM, 50))
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), live)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), truth)
    assert len(calls) == len(chunks) + 1
    reader.close()


def test_cli_compact_reports_refuses_and_queues(tmp_path, small_shards):
    index = tmp_path / "idx"
    ids = make_index(index, 200)
    result = runner.invoke(app, ["compact", "--index", str(index)])
    assert result.exit_code == 0 and result.stdout.startswith("nothing to compact"), result.output
    remove(index, ids[:25])
    with CrossGapIndex.open(index, readonly=True) as cgx:
        report = cgx.check(files=False)
        assert report.ok and any("`cgx compact`" in note for note in report.notes)
        with pytest.raises(StoreError, match="read-only") as raised:
            cgx.compact()
        assert "\n" not in str(raised.value)
    with IndexLock(index).hold():  # another writer holds the lock
        result = runner.invoke(app, ["compact", "--index", str(index), "--no-wait"])
    assert result.exit_code == 1 and "another process is writing" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(app, ["compact", "--index", str(index), "--min-dead", "1.5"])
    assert result.exit_code == 2  # outside [0, 1]: a usage error
    result = runner.invoke(app, ["compact", "--index", str(index), "--min-dead", "0.3"])
    assert result.exit_code == 0 and "compacted 2 vector shards" in result.stdout, result.output
    assert "50 dead rows freed" in result.stdout
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert all(use.live == use.record.rows for use in shard_use(cgx._store.catalog))


def test_unrecorded_shard_files_are_noted_by_check_and_deleted_by_repair(tmp_path, small_shards):
    index = tmp_path / "idx"
    make_index(index, 100)
    stray = index / "vectors" / "items-000007.f32"
    stray.write_bytes(b"\0" * 64)
    with CrossGapIndex.open(index, readonly=True) as cgx:
        report = cgx.check(files=False)
    assert report.ok and any("items-000007.f32: not in the catalog" in note for note in report.notes)
    with CrossGapIndex.open(index, readonly=None) as cgx:  # a writable open (no writer busy) deletes it
        assert not stray.exists()
        stray.write_bytes(b"\0" * 64)  # as if left meanwhile: check --repair deletes it too
        report = cgx.check(repair=True, files=False)
    assert not stray.exists() and report.ok
    assert any("items-000007.f32: not in the catalog" in line for line in report.repaired)


def test_a_failed_compaction_removes_its_new_files_and_keeps_the_old_shards(tmp_path, small_shards, monkeypatch):
    index = tmp_path / "idx"
    ids = make_index(index, 200)
    remove(index, ids[:25] + ids[64:90])
    before, names = answers(index), sorted(os.listdir(index / "vectors"))
    write = compact_module._NewShards.write
    calls = []

    def full_after_one(self, rows):
        if calls:
            raise OSError(28, "No space left on device")
        calls.append(1)
        return write(self, rows)

    monkeypatch.setattr(compact_module._NewShards, "write", full_after_one)
    with CrossGapIndex.open(index) as cgx, pytest.raises(StoreError, match="disk full"):
        cgx.compact(min_dead=0.2)
    assert sorted(os.listdir(index / "vectors")) == names  # the written new file is gone
    assert_same(before, answers(index))
    assert_checksums(index)


def test_check_compares_an_exact_faiss_file_with_the_shards_a_chunk_at_a_time(tmp_path, monkeypatch):
    index = tmp_path / "idx"
    ids = make_index(index, 300)
    with CrossGapIndex.open(index) as cgx:  # positions out of id order: a re-added id sits last in FAISS
        store = cgx._store
        held = store.indexes["image"]
        moved = store.catalog_vectors("image", [ids[5]])
        held.remove(np.array([ids[5]]))
        held.add(np.array([ids[5]]), moved)
        store.manifest.files["image"] = held.save(index / "image.faiss")
        store.manifest.save(index)
    monkeypatch.setattr(
        Store,
        "vector_chunks",
        lambda self, name, size=16_384: self.catalog.vector_chunks(name, name == "image-oti", DIM, 64),
    )
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx.check(files=False).ok
    with CrossGapIndex.open(index) as cgx:  # now one vector differs, the ids and checksums agree
        store = cgx._store
        held = store.indexes["image"]
        held.remove(np.array([ids[200]]))
        held.add(np.array([ids[200]]), -store.catalog_vectors("image", [ids[200]]))
        store.manifest.files["image"] = held.save(index / "image.faiss")
        store.manifest.save(index)
    with CrossGapIndex.open(index, readonly=True) as cgx:
        report = cgx.check(files=False)
    assert "image.faiss: holds other vectors than the catalog" in report.problems
