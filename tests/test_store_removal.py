"""Removals and re-adds keep every stored vector on its own id, for every factory family the store picks or
accepts, through saves and reopens; checked against a brute-force oracle over the live vectors.

FAISS's IDMap2 closes the gaps a removal leaves in its id table, and IVF lists keep the positions their
entries were added under: a removal through IDMap2 over IVF put ids on other items' vectors. The store
renumbers IVF lists itself (store/vectors.py); these tests are the property that says it does.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import faiss
import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.search.ranking import top_k_batch
from crossgap_index.store.check import check_store
from crossgap_index.store.directory import Store
from crossgap_index.store.vectors import VectorIndex, ivf_position_problem
from tests.support.cli import cgx
from tests.support.photos import MODEL

DIM = 32
TINY_DIM = 64  # tiny-random's embed_dim, for indexes made through `cgx import`
# Every family the store picks (auto: Flat, IVF-Flat, IVF over an HNSW coarse quantizer with SQ8 codes) or
# accepts (HNSW, PQ and SQ codes, IVF-PQ, a pre-transform over IVF).
FACTORIES = ["Flat", "IVF16,Flat", "IVF16_HNSW32,SQ8", "HNSW32", "PQ8x4", "SQ8", "IVF16,PQ8x4", "PCA16,IVF8,Flat"]


def unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def add(store: Store, vectors: np.ndarray, tag: str) -> list[int]:
    ids = [
        store.catalog.add_image(f"/v/{tag}/{i}", f"{zlib.crc32(tag.encode()):08x}{i:024x}", 1, 1, v)
        for i, v in enumerate(vectors)
    ]
    store.add("image", ids, vectors)
    return ids


def assert_each_finds_itself(store: Store, live: dict[int, np.ndarray], removed: set[int], rng) -> None:
    """Every sampled live vector: rank 1 of the store's own search (exact, or approximate re-scored exactly
    as search/ranking.py does), equal to the brute-force oracle's rank 1; no removed id is ever returned."""
    ids = np.array(sorted(live))
    vectors = np.stack([live[i] for i in ids])
    sample = rng.choice(len(ids), min(len(ids), 120), replace=False)
    ranked = top_k_batch(store, "image", vectors[sample], 10)
    oracle = ids[np.argmax(vectors[sample] @ vectors.T, axis=1)]
    got = np.array([r.ids[0] for r in ranked])
    np.testing.assert_array_equal(oracle, ids[sample])  # the oracle: each vector is its own nearest
    np.testing.assert_array_equal(got, ids[sample], err_msg=store.indexes["image"].resolved_factory)
    returned = {int(i) for r in ranked for i in r.ids}
    assert not returned & removed
    assert store.indexes["image"].ntotal == len(live)
    assert ivf_position_problem(store.indexes["image"].index) is None


@pytest.mark.slow
@pytest.mark.parametrize("factory", FACTORIES)
def test_random_removals_and_readds_keep_every_id_on_its_vector_through_saves(tmp_path, factory):
    rng = np.random.default_rng(zlib.crc32(factory.encode()))
    path = tmp_path / "idx"
    store = Store.create(path, "synthetic", DIM, factory)
    live: dict[int, np.ndarray] = {}
    removed: set[int] = set()
    with store.writing():
        first = unit(rng, 700)
        live.update(zip(add(store, first, "a"), first, strict=True))
        store.save()
    assert store.indexes["image"].resolved_factory == factory  # trained: the factory itself, not exact fallback
    for round_ in range(5):
        with store.writing():
            gone = [int(i) for i in rng.choice(sorted(live), int(rng.integers(5, 60)), replace=False)]
            readd = np.stack([live[i] for i in gone[: len(gone) // 2]])  # removed items' vectors come back
            store.remove(gone)
            for i in gone:
                del live[i]
            removed.update(gone)
            if round_ % 2:  # a commit between the removal and the re-add (the in-memory index changes twice)
                store.commit()
            fresh = np.concatenate([readd, unit(rng, int(rng.integers(0, 40)))])
            live.update(zip(add(store, fresh, f"r{round_}"), fresh, strict=True))
            store.save()
        assert_each_finds_itself(store, live, removed, rng)
        store.close()
        store = Store.open(path)
        assert store.rebuilt == []  # the saved file is read as it is, not rebuilt because it was wrong
        assert_each_finds_itself(store, live, removed, rng)
    report = check_store(store, files=False)
    assert report.ok, report.problems
    store.close()


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,PQ8x4", "PQ8x4"])
def test_vector_index_removal_matches_a_rebuild_of_the_survivors(factory):
    """The in-place removal and its straightforward twin (a fresh index of the survivors) answer alike."""
    rng = np.random.default_rng(3)
    vectors = unit(rng, 600)
    ids = np.arange(1, 601, dtype=np.int64)
    index = VectorIndex(DIM, factory)
    index.build(ids, vectors)
    gone = rng.choice(ids, 90, replace=False)
    assert index.remove(gone)
    keep = ~np.isin(ids, gone)
    twin = VectorIndex(DIM, factory)
    twin.index = faiss.deserialize_index(faiss.serialize_index(index.index))  # same training, same codes
    twin.index.reset()
    twin.add(ids[keep], vectors[keep])
    twin.search_params = index.search_params
    queries = unit(rng, 40)
    s1, i1 = index.search(queries, 10)
    s2, i2 = twin.search(queries, 10)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, rtol=1e-6)


def test_hnsw_cannot_remove_in_place_and_the_store_rebuilds_it(tmp_path):
    rng = np.random.default_rng(4)
    index = VectorIndex(DIM, "HNSW32")
    index.build(np.arange(1, 101), unit(rng, 100))
    assert index.remove(np.array([5])) is False  # the caller (Store.commit) rebuilds from the catalog


def old_removal(store_path: Path, ids: list[int]) -> None:
    """What the previous release did: IDMap2.remove_ids straight over the IVF, saved in the store's format
    (the manifest records the file's size and crc32, so only a check of ids against vectors can tell)."""
    from crossgap_index.store.manifest import Manifest
    from crossgap_index.store.vectors import file_record

    store = Store.open(store_path)
    with store.writing():
        index = faiss.read_index(str(store_path / "image.faiss"))
        index.remove_ids(np.asarray(ids, np.int64))
        store.catalog.remove(ids)
        store.catalog.commit()
        faiss.write_index(index, str(store_path / "image.faiss"))
        manifest = Manifest.load(store_path)
        manifest.files["image"] = file_record(store_path / "image.faiss")
        manifest.counts["image"] = int(index.ntotal)
        manifest.generation = store.catalog.generation
        manifest.save(store_path)
    store.close()


@pytest.fixture(scope="module")
def ivf_import(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """5,000 vectors imported with --factory IVF64,Flat (the issue's reproduction), through the real CLI."""
    root = tmp_path_factory.mktemp("ivf")
    vectors = unit(np.random.default_rng(5), 5000, TINY_DIM)
    np.save(root / "emb.npy", vectors)
    made = cgx("import", root / "emb.npy", "--index", root / "idx", "--model", MODEL, "--factory", "IVF64,Flat")
    assert made.returncode == 0, made.stderr
    assert "WARNING" not in made.stderr  # FAISS's k-means warnings stay off the user's terminal
    return root / "idx", vectors


@pytest.mark.slow
def test_cgx_remove_on_an_ivf_index_keeps_every_id_on_its_vector(tmp_path, ivf_import):
    import shutil

    index = Path(shutil.copytree(ivf_import[0], tmp_path / "idx"))
    vectors = ivf_import[1]
    removed = cgx("remove", "--id", 1, "--id", 2, "--id", 3, "--index", index)
    assert removed.returncode == 0, removed.stderr
    assert removed.stderr.strip() == "removed 3 items"  # and nothing of FAISS's
    with CrossGapIndex.open(index, readonly=True) as cgx_index:
        hit = cgx_index.search(vector=vectors[3999], k=1)[0]
        assert hit.id == 4000 and hit.score == pytest.approx(1.0, abs=1e-5)  # it was item 3259 at 0.206
        store = cgx_index._store
        assert store.rebuilt == [] and store.indexes["image"].resolved_factory == "IVF64,Flat"
        live = {i: vectors[i - 1] for i in range(4, 5001)}
        assert_each_finds_itself(store, live, {1, 2, 3}, np.random.default_rng(6))
    checked = cgx("check", "--no-files", "--index", index)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "WARNING" not in checked.stderr


@pytest.mark.slow
def test_an_index_damaged_by_the_old_removal_is_found_by_check_and_repaired(tmp_path, ivf_import):
    import shutil

    index = Path(shutil.copytree(ivf_import[0], tmp_path / "idx"))
    vectors = ivf_import[1]
    old_removal(index, [1, 2, 3])
    found = cgx("check", "--no-files", "--index", index)
    assert found.returncode == 1
    problem = [line for line in found.stdout.splitlines() if line.startswith("problem: image.faiss")]
    assert len(problem) == 1 and "IVF lists do not hold each vector under its own position" in problem[0]
    assert "Traceback" not in found.stdout + found.stderr and "WARNING" not in found.stderr
    repaired = cgx("check", "--repair", "--no-files", "--index", index)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert "repaired: image.faiss" in repaired.stdout
    assert cgx("check", "--no-files", "--index", index).returncode == 0
    with CrossGapIndex.open(index, readonly=True) as cgx_index:
        assert cgx_index._store.rebuilt == []
        assert cgx_index.search(vector=vectors[3999], k=1)[0].id == 4000


def test_check_finds_ids_moved_onto_other_vectors_by_its_self_search_and_repairs_them(tmp_path):
    """A file whose id table was permuted (sizes, checksums, ids all as recorded): only the self-search sees
    it, for a factory whose vectors check cannot compare one by one (SQ codes), and --repair rebuilds it."""
    from crossgap_index.store.manifest import Manifest
    from crossgap_index.store.vectors import file_record

    rng = np.random.default_rng(8)
    path = tmp_path / "idx"
    store = Store.create(path, "synthetic", DIM, "SQ8")
    with store.writing():
        vectors = unit(rng, 400)
        add(store, vectors, "a")
        store.save()
    assert check_store(store, files=False).ok
    store.close()
    index = faiss.read_index(str(path / "image.faiss"))
    table = faiss.vector_to_array(index.id_map)
    faiss.copy_array_to_vector(np.roll(table, 1), index.id_map)  # every id one vector along
    index.construct_rev_map()
    faiss.write_index(index, str(path / "image.faiss"))
    manifest = Manifest.load(path)
    manifest.files["image"] = file_record(path / "image.faiss")
    manifest.save(path)
    store = Store.open(path, readonly=True)
    report = check_store(store, files=False)
    assert not report.ok
    assert any(p.startswith("image.faiss: ids no longer match their vectors") for p in report.problems)
    store.close()
    store = Store.open(path)
    repaired = check_store(store, repair=True, files=False)
    assert repaired.ok and any(r.startswith("image.faiss: ids no longer match") for r in repaired.repaired)
    assert_each_finds_itself(store, dict(zip(range(1, 401), vectors, strict=True)), set(), rng)
    store.close()


def test_check_counts_many_equal_vectors_as_finding_themselves(tmp_path):
    """40 items with one vector (the same photo under 40 paths) tie at the top of any search of it: the
    self-search of a sound file does not call that a moved id."""
    rng = np.random.default_rng(9)
    store = Store.create(tmp_path / "idx", "synthetic", DIM, "IVF4,Flat")  # searched exactly: the top 32 only
    with store.writing():
        add(store, np.concatenate([np.repeat(unit(rng, 1), 40, axis=0), unit(rng, 60)]), "a")
        store.save()
    assert store.indexes["image"].resolved_factory == "IVF4,Flat"
    report = check_store(store, files=False)
    assert report.ok, report.problems
    store.close()


@pytest.mark.slow
def test_a_writable_open_of_an_index_damaged_by_the_old_removal_rebuilds_and_saves_it(tmp_path, ivf_import):
    import shutil

    index = Path(shutil.copytree(ivf_import[0], tmp_path / "idx"))
    old_removal(index, [1, 2, 3])
    with CrossGapIndex.open(index, readonly=True) as cgx_index:  # read-only: rebuilt in memory, answers right
        assert cgx_index._store.rebuilt == ["image"]
        assert cgx_index.search(vector=ivf_import[1][3999], k=1)[0].id == 4000
    with CrossGapIndex.open(index) as cgx_index:  # writable: rebuilt and saved
        assert cgx_index._store.rebuilt == ["image"]
    with CrossGapIndex.open(index, readonly=True) as cgx_index:
        assert cgx_index._store.rebuilt == [] and cgx_index.check(files=False).ok
        assert cgx_index.search(vector=ivf_import[1][3999], k=1)[0].id == 4000


@pytest.mark.slow  # a trained codebook per factory
@pytest.mark.parametrize(
    "factory", ["IVF64,Flat", "IVF16_HNSW32,SQ8", "IVF16,PQ8x4", "PQ8x4", "HNSW32,PQ8x4", "RQ2x4", "PCA16,IVF8,Flat"]
)
def test_training_on_few_rows_prints_nothing_of_faiss(capfd, factory):
    """FAISS's k-means writes its "WARNING clustering N points to K centroids" to the process's stderr itself
    (fd 2): the factory probe (64 rows) and small collections train that way, and no command shows it."""
    from crossgap_index.store.vectors import _factory_problem

    _factory_problem.cache_clear()
    rng = np.random.default_rng(10)
    index = VectorIndex(DIM, factory)
    index.build(np.arange(1, 301), unit(rng, 300))
    assert _factory_problem(factory, DIM) is None
    assert "WARNING" not in capfd.readouterr().err
