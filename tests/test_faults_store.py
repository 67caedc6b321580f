"""Faults in the index directory itself: damaged derived files and manifests,
damaged catalogs, read-only directories, concurrent writers, killed writers, many threads.

Every test uses real faults (truncated and bit-flipped files, killed processes, a read-only mount,
real threads and processes) and asserts what a user would see: the exit code, one line without a
traceback, nothing lost or doubled (catalog rows = files on disk = FAISS vectors), and results equal
to a clean index of the same files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import StoreError
from crossgap_index.inversion import InversionConfig
from crossgap_index.store.lock import IndexLock
from tests.support.cli import REPO, cgx_process
from tests.support.faults import cli, one_line, stored_items
from tests.support.pause import pause_env, wait_until_paused
from tests.support.photos import MODEL, write_photo

FEW_STEPS = InversionConfig(oti_steps=3, ovi_steps=3)


# -- helpers -------------------------------------------------------------------------------
def photos(folder: Path, n: int, first_seed: int = 0, size: tuple[int, int] = (48, 40)) -> Path:
    for i in range(n):
        write_photo(folder / f"p{first_seed + i:04d}.png", seed=first_seed + i, size=size)
    return folder


def build(index: Path, *folders: Path, **kwargs) -> None:
    with CrossGapIndex.open_or_create(index, model=MODEL, device="cpu", **kwargs) as cgx:
        for folder in folders:
            cgx.index_folders([folder])


def queries(n: int = 6, dim: int = 64) -> np.ndarray:
    vectors = np.random.default_rng(7).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def results(cgx: CrossGapIndex, k: int = 5) -> list[list[tuple[str, float]]]:
    """Hits of fixed vector queries as (path, score): comparable across indexes whose ids differ."""
    return [[(h.path, round(h.score, 4)) for h in cgx.search(vector=q, k=k)] for q in queries()]


def clean_results(tmp: Path, *folders: Path) -> list[list[tuple[str, float]]]:
    """What a fresh index of the same folders answers (the oracle)."""
    clean = tmp / f"clean-{time.monotonic_ns()}"
    build(clean, *folders)
    with CrossGapIndex.open(clean) as cgx:
        return results(cgx)


def assert_consistent(index: Path, *folders: Path) -> None:
    """Nothing lost or doubled: catalog rows = image files = FAISS vectors, and `check` finds nothing."""
    files = sorted(str(p.resolve()) for folder in folders for p in folder.glob("*.png"))
    with CrossGapIndex.open(index, readonly=True) as cgx:
        paths = [item.path for item in cgx.ls("image")]
        assert sorted(paths) == files  # each file once
        assert cgx._store.indexes["image"].ntotal == len(files)
        report = cgx.check()
        assert report.ok, report.problems
    on_disk = faiss.read_index(str(index / "image.faiss"))
    assert on_disk.ntotal == len(files)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("gallery"), 30)


@pytest.fixture(scope="module")
def built(tmp_path_factory, gallery) -> Path:
    index = tmp_path_factory.mktemp("built") / "idx"
    build(index, gallery)
    return index


@pytest.fixture(scope="module")
def clean(tmp_path_factory, gallery) -> list:
    return clean_results(tmp_path_factory.mktemp("oracle"), gallery)


@pytest.fixture
def index(tmp_path, built) -> Path:
    """A private copy of the built index, to damage."""
    return Path(shutil.copytree(built, tmp_path / "idx"))


# -- a --cross query must not make the next open rebuild -------------------------------
def test_cross_query_leaves_catalog_and_faiss_files_valid(index, gallery):
    before = {p.name: p.read_bytes() for p in index.glob("*.faiss")}
    with CrossGapIndex.open(index) as cgx:
        generation = cgx._store.catalog.generation
        cgx.search(image=gallery / "p0003.png", mode="cross", inversion=FEW_STEPS)
        assert cgx._store.catalog.generation == generation
    assert (index / "cache.sqlite").is_file()
    with CrossGapIndex.open(index) as cgx:
        assert cgx._store.rebuilt == []  # the FAISS files were loaded, not rebuilt
        steps = []
        cgx.search(
            image=gallery / "p0003.png", mode="cross", inversion=FEW_STEPS, progress=lambda s, _: steps.append(s)
        )
        assert steps == []  # served from cache.sqlite
    assert {p.name: p.read_bytes() for p in index.glob("*.faiss")} == before
    catalog = sqlite3.connect(index / "catalog.sqlite")
    tables = {r[0] for r in catalog.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    catalog.close()
    assert "inversion_cache" not in tables


def test_an_index_with_the_cache_inside_its_catalog_opens_and_keeps_its_cache(index, gallery):
    """Indexes made before cache.sqlite kept the cache as a catalog table: its rows are carried over."""
    with CrossGapIndex.open(index) as cgx:
        query = cgx.embed_query(image=gallery / "p0004.png")
        feature = cgx.invert(query, FEW_STEPS)
    legacy = sqlite3.connect(index / "catalog.sqlite")
    legacy.execute("CREATE TABLE inversion_cache (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
    cache = sqlite3.connect(index / "cache.sqlite")
    legacy.executemany(
        "INSERT INTO inversion_cache VALUES (?, ?)", cache.execute("SELECT key, vector FROM inversion_cache")
    )
    legacy.commit()
    legacy.close()
    cache.close()
    (index / "cache.sqlite").unlink()
    with CrossGapIndex.open(index) as cgx:
        assert cgx._store.rebuilt == []
        steps = []
        again = cgx.invert(query, FEW_STEPS, progress=lambda s, _: steps.append(s))
    assert steps == [] and np.allclose(again, feature)


def test_an_index_saved_before_checksums_opens_and_gains_them(index, clean):
    manifest = index / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["files"]
    manifest.write_text(json.dumps(data))
    with CrossGapIndex.open(index) as cgx:  # unverifiable files: rebuilt from the catalog, saved with checksums
        assert set(cgx._store.rebuilt) == {"image", "text", "image-oti", "text-ovi"}
        assert results(cgx) == clean
    assert set(json.loads(manifest.read_text())["files"]) == {"image", "text", "image-oti", "text-ovi"}
    with CrossGapIndex.open(index) as cgx:
        assert cgx._store.rebuilt == []


# -- damaged FAISS files are never read, and rebuilt -------------------------------
def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _bit_flip(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[len(data) - 200] ^= 0x10  # inside the stored vectors: FAISS would load it and rank wrongly
    p.write_bytes(bytes(data))


DAMAGE = {
    "truncated": _truncate,
    "bit-flipped": _bit_flip,
    "zero-length": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "missing": lambda p: p.unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_faiss_file_is_rebuilt_and_results_equal_a_clean_index(index, gallery, clean, damage):
    DAMAGE[damage](index / "image.faiss")
    with CrossGapIndex.open(index, readonly=True) as cgx:  # nothing written: the damage stays on disk
        assert cgx._store.rebuilt == ["image"]
        assert results(cgx) == clean
        report = cgx.check()
    assert not report.ok and any(p.startswith("image.faiss:") for p in report.problems)
    with CrossGapIndex.open(index) as cgx:  # writable: the rebuilt file is saved again
        assert results(cgx) == clean
    assert_consistent(index, gallery)


def test_a_later_build_does_not_keep_the_damage(index, gallery, clean, tmp_path):
    _bit_flip(index / "image.faiss")
    # A writer is busy: the opener cannot save its repair, but still answers right.
    with IndexLock(index).hold(), CrossGapIndex.open(index) as cgx:
        assert results(cgx) == clean
    build(index, gallery)  # nothing changed on disk: the build must still leave a sound file
    assert_consistent(index, gallery)


def test_cli_check_repair_and_query_on_a_bit_flipped_file(index, gallery):
    _bit_flip(index / "image.faiss")
    found = cli("check", "--index", index)
    assert found.exit_code == 1
    assert "problem: image.faiss: checksum differs from the manifest (damaged)" in found.stdout
    repaired = cli("check", "--index", index, "--repair", "--json")
    assert repaired.exit_code == 0, repaired.output
    report = json.loads(repaired.stdout)
    assert report["ok"] is True and any(line.startswith("image.faiss") for line in report["repaired"])
    assert cli("check", "--index", index).exit_code == 0

    _bit_flip(index / "image.faiss")  # a plain query: right answers, and the file is saved again
    query = cli("query", gallery / "p0002.png", "--index", index, "--json", "-k", 3)
    assert query.exit_code == 0, query.output
    hits = json.loads(query.stdout)["hits"]
    assert hits[0]["path"] == str((gallery / "p0002.png").resolve()) and hits[0]["score"] <= 1.0 + 1e-5
    assert cli("check", "--index", index).exit_code == 0


def test_ivf_factory_with_too_few_vectors_stays_exact_until_it_can_train(tmp_path, gallery, clean):
    index = tmp_path / "ivf"
    build(index, gallery, factory="IVF1024,Flat")  # 30 vectors, 1024 lists
    with CrossGapIndex.open(index) as cgx:
        assert cgx.info().factories["image"] == "Flat"
        assert results(cgx) == clean  # exact
    build(index, gallery)
    assert_consistent(index, gallery)

    small = tmp_path / "ivf16"
    build(small, photos(tmp_path / "few", 10), factory="IVF16,Flat")
    with CrossGapIndex.open(small) as cgx:
        assert cgx.info().factories["image"] == "Flat"
    build(small, photos(tmp_path / "more", 12, first_seed=100))
    with CrossGapIndex.open(small) as cgx:
        assert cgx.info().factories["image"] == "IVF16,Flat"  # 22 vectors: trained now
        assert cgx._store.rebuilt == []
        assert len(cgx.search(vector=queries()[0], k=5)) == 5


# -- damaged manifests and catalogs, bad --index: one line -------------------------
MANIFEST_DAMAGE = {
    "a JSON array": lambda m: [m],
    "a missing key": lambda m: {k: v for k, v in m.items() if k != "dim"},
    "a wrong type": lambda m: {**m, "factories": "Flat"},
    "a string dim": lambda m: {**m, "dim": "64"},
    "a bad checksum record": lambda m: {**m, "files": {"image": {"size": "big"}}},
}


@pytest.mark.parametrize("damage", MANIFEST_DAMAGE)
def test_damaged_manifest_is_one_line_naming_the_file(index, damage):
    manifest = index / "manifest.json"
    manifest.write_text(json.dumps(MANIFEST_DAMAGE[damage](json.loads(manifest.read_text()))))
    with pytest.raises(StoreError, match="manifest.json: damaged manifest"):
        CrossGapIndex.open(index)
    result = cli("info", "--index", index)
    assert result.exit_code == 1
    assert "manifest.json" in one_line(result.stderr)


def test_manifest_naming_another_model_is_one_line(index):
    manifest = index / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "model": "crossgap-small", "dim": 512}))
    with pytest.raises(StoreError, match="says dim 512 .* catalog holds 64-d vectors"):
        CrossGapIndex.open(index)
    manifest.write_text(json.dumps({**data, "model": "crossgap-small"}))  # same dim, other model
    with CrossGapIndex.open(index, device="cpu") as cgx, pytest.raises(StoreError, match="makes 128-d vectors"):
        cgx.search(text="a photo")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "zero pages"])
def test_damaged_catalog_is_one_line(index, damage):
    catalog = index / "catalog.sqlite"
    if damage == "garbage":
        catalog.write_bytes(os.urandom(catalog.stat().st_size))
    elif damage == "truncated":
        _truncate(catalog)
    else:
        catalog.write_bytes(b"SQLite format 3\x00" + b"\x00" * 200)
    result = cli("query", "--index", index, "--text", "a photo")
    assert result.exit_code == 1
    assert "catalog.sqlite" in one_line(result.stderr)


def test_index_option_on_a_file_or_an_unwritable_place_is_one_line(tmp_path, gallery):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    for args in (("info",), ("build-index", gallery, "--model", MODEL)):
        result = cli(*args, "--index", a_file)
        assert result.exit_code == 1
        assert "is a file, not an index directory" in one_line(result.stderr)
    result = cli("build-index", gallery, "--model", MODEL, "--index", "/proc/cgx-index")
    assert result.exit_code == 1
    assert "/proc/cgx-index" in one_line(result.stderr)


# -- a read-only index directory is searchable --------------------------------------
READ_ONLY_SCRIPT = """
import json, os, sys
from crossgap_index import CrossGapIndex
omp = os.environ.get("OMP_WAIT_POLICY")
from typer.testing import CliRunner
from crossgap_index.cli.app import app
from crossgap_index.errors import StoreError
from crossgap_index.inversion import InversionConfig
index, query = sys.argv[1], sys.argv[2]
out = {"omp": omp}
with CrossGapIndex.open(index) as cgx:
    out["readonly"] = cgx._store.readonly
    out["intra"] = [h.path for h in cgx.search(image=query, k=3)]
    out["cross"] = [h.path for h in cgx.search(image=query, k=3, mode="cross", inversion=InversionConfig(oti_steps=2))]
    try:
        cgx.add_texts(["a new text"])
    except StoreError as exc:
        out["write"] = str(exc)
result = CliRunner().invoke(app, ["query", query, "--index", index, "--paths-only", "-k", "3"])
out["cli"] = [result.exit_code, result.stdout.splitlines()]
print(json.dumps(out))
"""


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_read_only_index_directory_is_searchable(index, gallery):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m for a real read-only bind mount")
    query = gallery / "p0005.png"
    with CrossGapIndex.open(index) as cgx:  # leaves a WAL-mode catalog, as a build does
        expected = [h.path for h in cgx.search(image=query, k=3)]
    before = sorted(p.name for p in index.iterdir())
    mount = f"mount --bind -o ro {index} {index}"
    script = f'{mount} && exec "{sys.executable}" -c "$0" "{index}" "{query}"'
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, READ_ONLY_SCRIPT], env=env, capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["readonly"] is True
    assert out["omp"] == "PASSIVE"  # the library set OpenMP's passive wait before torch loaded
    assert out["intra"] == expected and out["intra"][0] == str(query.resolve())
    assert len(out["cross"]) == 3
    assert "read-only" in out["write"]
    assert out["cli"] == [0, expected]
    assert sorted(p.name for p in index.iterdir()) == before


# -- the writer lock ------------------------------------------------------------------
@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_concurrent_writers_wait_for_the_lock_or_fail_in_one_line_with_no_wait(tmp_path):
    """Three builds of one folder into one new index start together while the lock is held: the --no-wait
    one fails in one line, the two others say they wait, then run one after the other; all is stored once."""
    folder = photos(tmp_path / "photos", 16)
    index = tmp_path / "idx"
    args = ("build-index", folder, "--index", index, "--model", MODEL, "--device", "cpu", "--batch-size", 4)
    index.mkdir()
    with IndexLock(index).hold():
        impatient = cgx_process(*args, "--no-wait")
        waiting = [cgx_process(*args), cgx_process(*args)]
        _, impatient_err = impatient.communicate(timeout=300)
        assert impatient.returncode == 1
        assert "another process is writing" in one_line(impatient_err)
        for process in waiting:  # blocks until each has reached the lock and said so
            assert any("waiting for another process" in line for line in iter(process.stderr.readline, ""))
        assert not (index / "manifest.json").exists()  # nothing written while the lock was held
    outputs = [process.communicate(timeout=300) for process in waiting]
    assert [process.returncode for process in waiting] == [0, 0], outputs
    assert not any("Traceback" in err for _, err in outputs)
    assert_consistent(index, folder)


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_writer_killed_mid_build_then_resumed_loses_and_doubles_nothing(tmp_path, monkeypatch):
    folder = photos(tmp_path / "photos", 150, size=(160, 120))
    index = tmp_path / "idx"
    pause, fifo = pause_env(tmp_path, "build-committed", 5)  # held after its fifth commit: 10 images stored
    with monkeypatch.context() as patched:
        for name, value in pause.items():
            patched.setenv(name, value)
        writer = cgx_process(
            "build-index", folder, "--index", index, "--model", MODEL, "--device", "cpu", "--batch-size", 2,
            "--workers", 1,
        )  # fmt: skip
    held = wait_until_paused(writer, fifo)
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    os.close(held)
    stored = stored_items(index, "image")
    assert stored == 10, "the writer was not caught mid-build"
    with CrossGapIndex.open(index) as cgx:  # resumed by a writer in this process: the lock was freed by the kill
        report = cgx.index_folders([folder], batch_size=16)
    assert report.unchanged >= stored and report.unchanged + report.added == 150
    assert report.embedded == report.added  # what the killed writer stored is not embedded again
    assert_consistent(index, folder)


# -- one opened index, many threads, another process writing ----------------------------
@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_eight_threads_search_one_index_while_another_process_builds_into_it(built, tmp_path, gallery, clean):
    index = Path(shutil.copytree(built, tmp_path / "idx"))
    extra = photos(tmp_path / "extra", 16, first_seed=1000)
    failures: list[BaseException] = []
    answers: list[list] = []
    stop = threading.Event()

    with CrossGapIndex.open(index, device="cpu") as cgx:
        text_expected = [h.id for h in cgx.search(text="a red block", k=5)]

        def search_until_stopped():
            try:
                while not stop.is_set():
                    answers.append(results(cgx))
                    assert [h.id for h in cgx.search(text="a red block", k=5)] == text_expected
                    time.sleep(0.01)  # leave the writer process some of the 2 cores
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=search_until_stopped) for _ in range(8)]
        for thread in threads:
            thread.start()
        writer = cgx_process("build-index", extra, "--index", index, "--device", "cpu", "--batch-size", 4)
        _, writer_err = writer.communicate(timeout=300)
        deadline = time.monotonic() + 120
        while len(answers) < 8 and not failures:  # enough searches of the opened state, however busy the machine
            assert time.monotonic() < deadline, "the searching threads never ran"
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join()
        assert writer.returncode == 0, writer_err
        assert failures == []
        assert len(answers) >= 8 and all(answer == clean for answer in answers)  # the state it opened
        assert cgx.refresh()  # then it picks up the other process's build
        after = results(cgx)
    assert after == clean_results(tmp_path, gallery, extra)
    assert_consistent(index, gallery, extra)


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_threads_search_while_a_thread_of_the_same_process_writes(index, gallery, clean, tmp_path):
    extra = photos(tmp_path / "extra", 12, first_seed=2000)
    final = clean_results(tmp_path, gallery, extra)
    failures: list[BaseException] = []
    seen: list[list] = []
    stop = threading.Event()
    with CrossGapIndex.open(index, device="cpu") as cgx:

        def search_until_stopped():
            try:
                while not stop.is_set():
                    seen.append(results(cgx))
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=search_until_stopped) for _ in range(8)]
        for thread in threads:
            thread.start()
        cgx.index_folders([extra], batch_size=64)  # one batch: the index is either before or after it
        written, deadline = len(seen), time.monotonic() + 120
        while final not in seen[written:] and not failures:  # until a search begun after the write has ended
            assert time.monotonic() < deadline, "no search saw the finished write"
            time.sleep(0.01)
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    # Each search sees one committed state: before the batch landed, or after (a set of searches may span it).
    assert all(answer[i] in (clean[i], final[i]) for answer in seen for i in range(len(answer)))
    assert final in seen[written:]
    assert_consistent(index, gallery, extra)


# -- remove, ls, check ---------------------------------------------------------------
def test_remove_by_folder_missing_file_and_id_then_ls(tmp_path):
    kept = photos(tmp_path / "photos" / "kept", 6)
    gone = photos(tmp_path / "photos" / "gone", 4, first_seed=50)
    index = tmp_path / "idx"
    build(index, tmp_path / "photos")
    shutil.rmtree(gone)  # a vanished folder
    (kept / "p0000.png").unlink()  # a vanished file
    typo = cli("remove", tmp_path / "photos" / "nothing-here", "--index", index)
    assert typo.exit_code == 1 and "nothing indexed" in one_line(typo.stderr)
    assert cli("remove", "--index", index).exit_code != 0  # nothing to remove named

    removed = cli("remove", gone, "--index", index)
    assert removed.exit_code == 0, removed.output
    assert "removed 4 items" in removed.stderr
    assert cli("check", "--index", index).exit_code == 1  # p0000.png is gone from disk
    assert cli("remove", "--missing", "--index", index).exit_code == 0
    listed = cli("ls", "--index", index, "--json")
    items = json.loads(listed.stdout)
    assert sorted(i["path"] for i in items) == sorted(str(p.resolve()) for p in kept.glob("*.png"))
    victim = items[0]
    assert cli("remove", "--id", victim["id"], "--index", index).exit_code == 0
    (Path(victim["path"])).unlink()
    unknown = cli("remove", "--id", 99999, "--index", index)
    assert unknown.exit_code == 1 and "no item with id 99999" in one_line(unknown.stderr)
    plain = cli("ls", "--index", index, "--modality", "image")
    assert len(plain.stdout.splitlines()) == 4 and all("\timage\t" in line for line in plain.stdout.splitlines())
    assert_consistent(index, kept)
    assert cli("check", "--index", index).exit_code == 0


def test_check_reports_stale_files_and_non_unit_vectors(index, gallery):
    with CrossGapIndex.open(index) as cgx:
        ids = [item.id for item in cgx.ls()]
        catalog = cgx._store.catalog
        with cgx._store.writing():
            row = catalog.images()[cgx.ls()[0].path]
            catalog.remove([ids[0]])  # the same item again, with a vector that is not unit-norm
            catalog.add_images([row.path], [row.content_hash], np.full((1, 64), 0.5, np.float32), ids=[ids[0]])
            catalog.commit()  # as a writer killed between its catalog commit and its FAISS save leaves it
    with CrossGapIndex.open(index, readonly=True) as cgx:
        report = cgx.check()
    assert not report.ok
    assert any("stale" in p and "will be rebuilt on next open" in p for p in report.notes)  # not a problem
    assert any("not unit-norm" in p and str(ids[0]) in p for p in report.problems)


def test_ls_remove_and_check_keep_non_utf8_file_names(tmp_path):
    folder = photos(tmp_path / "photos", 3)
    odd = Path(os.fsdecode(bytes(folder) + b"/\xff\xfe-caf\xe9.png"))  # latin-1 bytes, not UTF-8
    shutil.copy(folder / "p0000.png", odd)
    index = tmp_path / "idx"
    build(index, folder)
    listed = cli("ls", "--index", index)
    assert listed.exit_code == 0, listed.output
    assert b"\xff\xfe-caf\xe9.png\n" in listed.stdout_bytes  # the name's own bytes, not mangled
    odd.unlink()
    missing = cli("check", "--index", index)
    assert missing.exit_code == 1 and b"missing: " + os.fsencode(odd) in missing.stdout_bytes
    assert cli("remove", odd, "--index", index).exit_code == 0  # a vanished non-UTF-8 path, by name
    assert_consistent(index, folder)
