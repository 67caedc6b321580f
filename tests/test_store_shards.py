"""Vectors in append-only memory-mapped shards (store/shards.py): what the catalog points at is what
was written, across shard boundaries, removals, float16, pending rows, a killed writer's dead tail;
damaged shards are refused in one line (or written again by check --repair from an uncompressed FAISS
file); an index of the previous release (vectors as BLOBs in the catalog) serves read-only as it is and
migrates once on a writable open, with the same answers; large FAISS files are verified in the
background and never served unverified; auto's compressed tier keeps recall through exact re-scoring."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import StoreError
from crossgap_index.inversion import InversionConfig
from crossgap_index.search.ranking import top_k
from crossgap_index.store import catalog as catalog_module
from crossgap_index.store import shards as shards_module
from crossgap_index.store import vectors as vectors_module
from crossgap_index.store.directory import Store
from tests.support.legacy_index import to_legacy
from tests.support.photos import MODEL, write_photo

runner = CliRunner()
DIM = 16


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def small_shards(monkeypatch):
    """Shards of 64 rows, so a few hundred vectors span many shard files."""
    monkeypatch.setattr(shards_module, "SHARD_ROWS", 64)
    monkeypatch.setattr(catalog_module, "SHARD_ROWS", 64)
    return 64


def add_vectors(store: Store, vectors: np.ndarray, first: int = 0) -> list[int]:
    ids = [store.catalog.add_image(f"/v/{first + i}", f"{first + i:032x}", 1, 1, v) for i, v in enumerate(vectors)]
    store.add("image", ids, vectors)
    return ids


def test_vectors_round_trip_across_shards_removals_and_commits(tmp_path, small_shards):
    rng = np.random.default_rng(0)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat")
    truth: dict[int, np.ndarray] = {}
    with store.writing():
        for batch in range(5):  # 5 commits of 50: appends that start mid-shard and cross shard ends
            vectors = unit(rng, 50)
            truth.update(zip(add_vectors(store, vectors, 50 * batch), vectors, strict=True))
            store.commit()
        gone = sorted(truth)[10:30]
        store.remove(gone)
        for i in gone:
            del truth[i]
        store.save()
    ids = np.array(sorted(truth))
    np.testing.assert_array_equal(store.catalog_vectors("image", ids[::-1]), np.stack([truth[i] for i in ids[::-1]]))
    files = sorted(p.name for p in (tmp_path / "idx" / "vectors").iterdir())
    assert files == [f"items-{n:06d}.f32" for n in range(4)]  # 250 rows (dead ones kept) in 64-row shards
    assert (tmp_path / "idx" / "vectors" / "items-000003.f32").stat().st_size == (250 - 3 * 64) * DIM * 4
    store.close()
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx:
        assert cgx._store.rebuilt == []
        found = cgx.search(vector=truth[ids[-1]], k=1)
        assert found[0].id == ids[-1] and found[0].score == pytest.approx(1.0, abs=1e-5)
        assert cgx.check(files=False).ok


def test_pending_rows_are_read_back_before_commit_and_forgotten_on_rollback(tmp_path):
    rng = np.random.default_rng(1)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat")
    committed = unit(rng, 3)
    with store.writing():
        first = add_vectors(store, committed)
        store.save()
    pending = unit(rng, 2)
    with pytest.raises(RuntimeError), store.writing():
        ids = add_vectors(store, pending, 3)
        np.testing.assert_array_equal(store.catalog_vectors("image", [ids[1], first[0]]), [pending[1], committed[0]])
        raise RuntimeError("the writer fails before its commit")
    assert store.catalog.count("image") == 3
    with store.writing():  # the next rows take the slots the rolled-back ones would have had
        again = add_vectors(store, pending[::-1], 3)
        store.save()
    np.testing.assert_array_equal(store.catalog_vectors("image", again), pending[::-1])
    assert store.catalog.shard_problems(full=True) == []
    store.close()


def test_float16_shards_hold_half_the_bytes_and_fp16_rounded_vectors(tmp_path):
    rng = np.random.default_rng(2)
    vectors = unit(rng, 40)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat", vector_dtype="float16")
    with store.writing():
        ids = add_vectors(store, vectors)
        store.save()
    np.testing.assert_array_equal(store.catalog_vectors("image", ids), vectors.astype(np.float16).astype(np.float32))
    assert (tmp_path / "idx" / "vectors" / "items-000000.f16").stat().st_size == 40 * DIM * 2
    store.close()
    reopened = Store.open(tmp_path / "idx")
    assert reopened.rebuilt == [] and reopened.catalog.vector_dtype() == "float16"
    reopened.close()


def test_a_killed_writers_dead_tail_is_ignored_then_cut_off(tmp_path):
    rng = np.random.default_rng(3)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat")
    with store.writing():
        add_vectors(store, unit(rng, 10))
        store.save()
    store.close()
    shard = tmp_path / "idx" / "vectors" / "items-000000.f32"
    with shard.open("ab") as f:  # fsynced bytes whose catalog commit never happened (kill -9 in between)
        f.write(np.full((3, DIM), 7.0, np.float32).tobytes())
    store = Store.open(tmp_path / "idx")
    assert store.catalog.count("image") == 10 and store.catalog.shard_problems(full=True) == []
    fresh = unit(rng, 2)
    with store.writing():
        ids = add_vectors(store, fresh, 10)
        store.save()
    assert shard.stat().st_size == 12 * DIM * 4  # the dead rows were cut off, the new ones in their place
    np.testing.assert_array_equal(store.catalog_vectors("image", ids), fresh)
    store.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """Images, texts and the gallery's OTI features, with tiny-random."""
    gallery = tmp_path_factory.mktemp("gallery")
    for i in range(12):
        write_photo(gallery / f"p{i:02d}.png", seed=i)
    index = tmp_path_factory.mktemp("built") / "idx"
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([gallery])
        cgx.add_texts(["a red block", "a blue block", "noise"])
        cgx.invert_gallery(InversionConfig(oti_steps=2))
        cgx.remove(ids=[3])  # a removed id: the migrated catalog must not hand it out again
    return index, gallery


@pytest.fixture
def index(tmp_path, built) -> Path:
    return Path(shutil.copytree(built[0], tmp_path / "idx"))


def answers(cgx: CrossGapIndex) -> list:
    queries = unit(np.random.default_rng(7), 4, 64)
    hits = [[(h.id, round(h.score, 5)) for h in cgx.search(vector=q, k=5)] for q in queries]
    texts = [(h.id, round(h.score, 5)) for h in cgx.search(vector=queries[0], k=3, target="texts")]
    return [hits, texts]


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_short_or_missing_shard_is_refused_in_one_line(index, damage):
    shard = index / "vectors" / "items-000000.f32"
    if damage == "missing":
        shard.unlink()
    else:
        shard.write_bytes(shard.read_bytes()[:-100])
    result = cli("info", "--index", index)
    line = one_line_error(result.stderr)
    assert result.exit_code == 1 and "vectors/items-000000.f32" in line and damage in line
    with pytest.raises(StoreError, match="restore the index directory from a backup"):
        CrossGapIndex.open(index, readonly=True)


def test_a_bit_flipped_shard_is_reported_and_never_indexed(index):
    shard = index / "vectors" / "items-000000.f32"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x10
    shard.write_bytes(bytes(data))
    found = cli("check", "--index", index)
    assert found.exit_code == 1 and "items-000000.f32: checksum differs" in found.stdout
    (index / "image.faiss").unlink()  # the rebuild would read every vector: it refuses instead
    with pytest.raises(StoreError, match="items-000000.f32: checksum differs"):
        CrossGapIndex.open(index, readonly=True)


def test_an_index_of_the_previous_release_serves_read_only_as_it_is(index):
    with CrossGapIndex.open(index, readonly=True) as cgx:
        before = answers(cgx)
    to_legacy(index, 64)
    catalog_bytes = (index / "catalog.sqlite").read_bytes()
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx._store.catalog.legacy and cgx._store.rebuilt == []
        assert answers(cgx) == before
        assert cgx.check(files=False).ok
    assert not (index / "vectors").exists() and (index / "catalog.sqlite").read_bytes() == catalog_bytes


def test_an_index_of_the_previous_release_migrates_once_on_a_writable_open(index, built):
    with CrossGapIndex.open(index, readonly=True) as cgx:
        before = answers(cgx)
        items = [(i.id, i.modality, i.path, i.text) for i in cgx.ls()]
    to_legacy(index, 64)
    with CrossGapIndex.open(index) as cgx:
        assert not cgx._store.catalog.legacy
        assert cgx._store.rebuilt == []  # same ids and vectors: the FAISS files stay valid
        assert answers(cgx) == before
        assert [(i.id, i.modality, i.path, i.text) for i in cgx.ls()] == items
    conn = sqlite3.connect(index / "catalog.sqlite")
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    assert "vector" not in {r[1] for r in conn.execute("PRAGMA table_info(items)")}
    assert conn.execute("PRAGMA freelist_count").fetchone() == (0,)  # VACUUM gave the BLOBs' pages back
    conn.close()
    assert cli("check", "--index", index).exit_code == 0
    write_photo(built[1] / "new.png", seed=99)
    try:
        with CrossGapIndex.open(index) as cgx:  # a second open does not migrate again; writes go on
            cgx.index_folders([built[1]])
            new = [i for i in cgx.ls("image") if i.path.endswith("new.png")][0]
            assert new.id > max(i for i, *_ in items)  # the id sequence survived (removed id 3 not reused)
            assert cgx.search(vector=cgx.embed_query(image=built[1] / "new.png").feature, k=1)[0].id == new.id
        assert cli("check", "--index", index).exit_code == 0
    finally:
        (built[1] / "new.png").unlink()


def test_an_interrupted_migration_leaves_the_old_index_whole_and_is_redone(index, monkeypatch):
    with CrossGapIndex.open(index, readonly=True) as cgx:
        before = answers(cgx)
    to_legacy(index, 64)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # shards written and fsynced, the SQLite swap never ran

    monkeypatch.setattr(catalog_module.Catalog, "_swap_tables", killed)
    with pytest.raises(KeyboardInterrupt):
        CrossGapIndex.open(index)
    monkeypatch.undo()
    assert (index / "vectors").exists()  # orphan shards, referenced by nothing
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx._store.catalog.legacy and answers(cgx) == before
    with CrossGapIndex.open(index) as cgx:
        assert not cgx._store.catalog.legacy and answers(cgx) == before
    manifest = json.loads((index / "manifest.json").read_text())
    assert manifest["counts"]["image"] == 11
    assert cli("check", "--index", index).exit_code == 0


@pytest.mark.parametrize("damaged", [False, True])
def test_a_large_faiss_file_is_verified_in_the_background_and_never_served_unverified(index, monkeypatch, damaged):
    with CrossGapIndex.open(index, readonly=True) as cgx:
        before = answers(cgx)
    monkeypatch.setattr(vectors_module, "LAZY_VERIFY_BYTES", 0)  # every file counts as large
    if damaged:
        data = bytearray((index / "image.faiss").read_bytes())
        data[len(data) - 200] ^= 0x10  # inside the stored vectors: FAISS would parse it and rank wrongly
        (index / "image.faiss").write_bytes(bytes(data))
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert answers(cgx) == before  # the first search waited for the verdict (and the rebuild)
        assert cgx._store.rebuilt == (["image"] if damaged else [])
        assert cgx._store.indexes["image"].ready and cgx._store.indexes["text"].ready
        assert cgx._store.indexes["image"]._mapped is not damaged  # a sound file is served from its mapping


def test_a_mapped_index_is_copied_into_memory_before_it_changes(index, built):
    with CrossGapIndex.open(index) as cgx:
        image = cgx._store.indexes["image"]
        assert image._mapped  # loaded from its verified file without copying it
        cgx.remove(ids=[2])  # FAISS cannot shrink a mapped index: it is copied first
        assert not image._mapped and image.ntotal == 10
        assert 2 not in [h.id for h in cgx.search(vector=unit(np.random.default_rng(1), 1, 64)[0], k=20)]
    assert cli("check", "--index", index).exit_code == 0


def test_auto_above_the_compressed_limit_uses_sq8_codes_rescored_exactly_from_the_shards(tmp_path, monkeypatch):
    """The compressed tier of `auto` (limits scaled down: 20,000 vectors count as "above 2M"): IVF over
    8-bit codes with an HNSW coarse quantizer; re-scored from the shards, recall@10 >= 0.95 vs exact."""
    monkeypatch.setattr(vectors_module, "EXACT_SEARCH_LIMIT", 1_000)
    monkeypatch.setattr(vectors_module, "COMPRESSED_ABOVE", 5_000)
    rng = np.random.default_rng(4)
    centres = unit(rng, 200, 32)
    vectors = centres[rng.integers(0, 200, 20_000)] + rng.normal(0, 0.1, (20_000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = Store.create(tmp_path / "idx", "synthetic", 32, "auto")
    with store.writing():
        store.catalog.add_images([None] * 20_000, [f"h{i}" for i in range(20_000)], vectors, range(1, 20_001))
        store.save()
    index = store.indexes["image"]
    assert index.resolved_factory == "IVF128_HNSW32,SQ8" and not index.needs_rebuild()
    queries = vectors[rng.integers(0, 20_000, 50)] + rng.normal(0, 0.05, (50, 32)).astype(np.float32)
    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10] + 1
    found = [top_k(store, "image", q, 10) for q in queries]
    recall = np.mean([len(np.intersect1d(f.ids, e)) / 10 for f, e in zip(found, exact, strict=True)])
    assert recall >= 0.95, recall
    np.testing.assert_allclose(found[0].scores, vectors[found[0].ids - 1] @ queries[0], rtol=1e-5)  # exact scores
    store.close()


def test_check_repair_writes_a_bit_flipped_shard_again_from_an_uncompressed_faiss_file(index):
    with CrossGapIndex.open(index, readonly=True) as cgx:
        before = answers(cgx)
    for name in ("items-000000.f32", "image-oti-000000.f32"):
        shard = index / "vectors" / name
        data = bytearray(shard.read_bytes())
        data[5 * 64 * 4 + 17] ^= 0x10  # inside a live row
        shard.write_bytes(bytes(data))
    assert cli("check", "--index", index).exit_code == 1
    repaired = cli("check", "--repair", "--index", index)
    assert repaired.exit_code == 0, repaired.output
    assert "repaired: vectors/items-000000.f32: checksum differs" in repaired.stdout
    assert "written again from the FAISS files" in repaired.stdout
    assert cli("check", "--index", index).exit_code == 0
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert answers(cgx) == before and cgx._store.rebuilt == []  # same vectors: FAISS files still current


def test_reads_with_pread_equal_the_memory_mapped_twin(tmp_path, small_shards, monkeypatch):
    rng = np.random.default_rng(6)
    vectors = unit(rng, 300)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "Flat", vector_dtype="float16")
    with store.writing():
        add_vectors(store, vectors)
        store.save()
    slots = np.concatenate([np.arange(10, 290), [299, 3, 3, 150, 64, 63]])  # runs across shards, then scattered
    shards = store.catalog.shards()
    monkeypatch.setattr(shards_module, "READ_RUN_ROWS", 10**9)  # the twin: every row through the map
    mapped = shards.gather("items", slots)
    monkeypatch.setattr(shards_module, "READ_RUN_ROWS", 1)
    np.testing.assert_array_equal(shards.gather("items", slots), mapped)
    np.testing.assert_array_equal(mapped, vectors[slots].astype(np.float16).astype(np.float32))
    store.close()
