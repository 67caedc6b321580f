"""`cgx import`: embeddings made elsewhere (.npy + metadata, parquet, clip-retrieval's folder) into an
index, read a batch at a time, ids 1..N unless named, idempotent, the model's weights never loaded, and
every bad input refused in one line."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.ingest import embeddings as embeddings_module
from tests.support.cli import REPO
from tests.support.pause import pause_env, wait_until_paused
from tests.support.photos import MODEL

DIM = 64  # tiny-random's embed_dim
runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


def rows(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(dtype)


def unit(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def embedding_table(vectors: np.ndarray, **columns) -> pa.Table:
    return pa.table({"embedding": pa.array(list(vectors.astype(np.float32)), pa.list_(pa.float32())), **columns})


def test_npy_with_jsonl_metadata_gets_ids_in_file_order_and_reimport_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings_module, "BATCH_ROWS", 64)  # 300 rows: five batches, five commits
    vectors = rows(300, dtype=np.float16)
    np.save(tmp_path / "emb.npy", vectors)
    with (tmp_path / "meta.jsonl").open("w") as f:
        for i in range(300):
            f.write(json.dumps({"path": f"/photos/{i}.jpg", "caption": f"photo {i}"}) + "\n")
    index = tmp_path / "idx"
    result = cli("import", tmp_path / "emb.npy", "--meta", tmp_path / "meta.jsonl", "--index", index, "--model", MODEL)
    assert result.exit_code == 0, result.output
    assert "imported 300 rows: 300 added, 0 updated, 0 unchanged" in result.stderr
    assert sorted(p.name for p in (index / "vectors").iterdir()) == ["items-000000.f16"]  # float16 in, float16 kept
    with CrossGapIndex.open(index, readonly=True) as cgx:
        items = cgx.ls("image")
        assert [i.id for i in items] == list(range(1, 301))
        assert items[41].path == "/photos/41.jpg" and items[41].text == "photo 41"
        hit = cgx.search(vector=unit(vectors[41:42])[0], k=1)[0]
        assert hit.id == 42 and hit.score == pytest.approx(1.0, abs=1e-3)
        assert cgx.check(files=False).ok
    generation = json.loads((index / "manifest.json").read_text())["generation"]
    before = {p.name: p.read_bytes() for p in index.rglob("*") if p.is_file() and "catalog" not in p.name}
    again = cli("import", tmp_path / "emb.npy", "--meta", tmp_path / "meta.jsonl", "--index", index, "--model", MODEL)
    assert again.exit_code == 0 and "imported 300 rows: 0 added, 0 updated, 300 unchanged" in again.stderr
    after = {p.name: p.read_bytes() for p in index.rglob("*") if p.is_file() and "catalog" not in p.name}
    assert after == before and json.loads((index / "manifest.json").read_text())["generation"] == generation


def test_parquet_files_with_named_ids_and_an_interrupted_import_resumes(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings_module, "BATCH_ROWS", 50)
    vectors = rows(200, seed=1)
    ids = np.arange(200) * 7 + 1000  # the id column names them
    folder = tmp_path / "parts"
    folder.mkdir()
    for part in range(2):
        chunk = slice(100 * part, 100 * (part + 1))
        table = embedding_table(vectors[chunk], id=ids[chunk], caption=[f"c{i}" for i in ids[chunk]])
        pq.write_table(table, folder / f"part-{part}.parquet")
    index = tmp_path / "idx"
    calls = []

    def stop_after_two_batches(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        CrossGapIndex.import_embeddings(folder, index, MODEL, progress=stop_after_two_batches)
    report = CrossGapIndex.import_embeddings(folder, index, MODEL)
    assert (report.added, report.unchanged) == (100, 100)
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert [i.id for i in cgx.ls("image")] == ids.tolist()
        assert cgx.search(vector=unit(vectors[150:151])[0], k=1)[0].id == ids[150]
        assert cgx.check(files=False).ok


def test_clip_retrieval_folder_pairs_embeddings_with_their_metadata(tmp_path):
    folder = tmp_path / "clip-retrieval"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    vectors = rows(30, seed=2)
    for part in range(3):  # written out of order on purpose: paired by K, read in K order
        chunk = slice(10 * part, 10 * (part + 1))
        np.save(folder / "img_emb" / f"img_emb_{part}.npy", vectors[chunk])
        paths = [f"/shard{part}/{i}.jpg" for i in range(10)]
        pq.write_table(
            pa.table({"image_path": paths, "caption": ["x"] * 10}), folder / "metadata" / f"metadata_{part}.parquet"
        )
    report = CrossGapIndex.import_embeddings(folder, tmp_path / "idx", MODEL)
    assert report.added == 30
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx:
        items = cgx.ls("image")
        assert [i.path for i in items[9:11]] == ["/shard0/9.jpg", "/shard1/0.jpg"]
        assert cgx.search(vector=unit(vectors[25:26])[0], k=1)[0].id == 26


def test_import_never_loads_the_model(tmp_path):
    np.save(tmp_path / "emb.npy", rows(10))
    code = (
        "import sys; from crossgap_index import CrossGapIndex; "
        f"CrossGapIndex.import_embeddings({str(tmp_path / 'emb.npy')!r}, {str(tmp_path / 'idx')!r}, {MODEL!r}); "
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'a model was loaded'"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def _bad_inputs(tmp: Path) -> dict[str, tuple[list, str]]:
    np.save(tmp / "ok.npy", rows(5))
    np.save(tmp / "wide.npy", np.ones((5, 128), np.float32))
    np.save(tmp / "cube.npy", np.ones((2, 2, 2), np.float32))
    np.save(tmp / "ints.npy", np.ones((5, DIM), np.int64))
    zero = rows(5)
    zero[3] = 0
    np.save(tmp / "zero.npy", zero)
    (tmp / "short.jsonl").write_text('{"path": "/a"}\n')
    pq.write_table(pa.table({"values": [[1.0] * DIM]}), tmp / "noemb.parquet")
    pq.write_table(embedding_table(rows(2), id=[4, 4]), tmp / "twice.parquet")
    pq.write_table(embedding_table(rows(2), id=[0, 1]), tmp / "zeroid.parquet")
    (tmp / "text.npy").write_text("not numpy")
    return {
        "wrong width": (["wide.npy"], "128-d embeddings, but model 'tiny-random' makes 64-d"),
        "three dims": (["cube.npy"], "needs N x d float32 or float16 rows"),
        "integers": (["ints.npy"], "needs N x d float32 or float16 rows"),
        "a zero row": (["zero.npy"], "row 4 is all zeros or holds a value that is not finite"),
        "metadata count": (["ok.npy", "--meta", "short.jsonl"], "1 rows of metadata for the 5 rows"),
        "no embedding column": (["noemb.parquet"], "no 'embedding' or 'vector' column"),
        "an id twice": (["twice.parquet"], "id 4 is given to rows 1 and 2"),
        "id zero": (["zeroid.parquet"], "row 1: ids must be integers 1..9007199254740991 (2**53 - 1), found 0"),
        "not npy": (["text.npy"], "text.npy: not an .npy array (its header says: the magic string is not correct"),
        "missing": (["nothing.npy"], "no such file or folder"),
        "other type": (["short.jsonl"], "not an .npy or .parquet file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "wrong width",
        "three dims",
        "integers",
        "a zero row",
        "metadata count",
        "no embedding column",
        "an id twice",
        "id zero",
        "not npy",
        "missing",
        "other type",
    ],
)
def test_bad_input_is_one_line(tmp_path, case):
    args, message = _bad_inputs(tmp_path)[case]
    result = cli(
        "import",
        *[tmp_path / args[0], *args[1:2], *[tmp_path / a for a in args[2:]]],
        "--index",
        tmp_path / "idx",
        "--model",
        MODEL,
    )
    assert result.exit_code == 1
    assert message in one_line_error(result.stderr)


def test_ids_of_built_images_are_not_overwritten_and_unnumbered_rows_come_after_them(tmp_path, photo_folder):
    index = tmp_path / "idx"
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photo_folder])
        built = [i.id for i in cgx.ls("image")]
    pq.write_table(embedding_table(rows(3), id=[9, 1, 10]), tmp_path / "numbered.parquet")
    result = cli("import", tmp_path / "numbered.parquet", "--index", index, "--model", MODEL)
    assert "id 1 belongs to an item of the index that was not imported" in one_line_error(result.stderr)
    assert result.exit_code == 1
    np.save(tmp_path / "emb.npy", rows(3))
    other = cli("import", tmp_path / "emb.npy", "--index", index, "--model", "crossgap-small")
    assert other.exit_code == 1 and "64-d embeddings, but model 'crossgap-small' makes 128-d" in other.stderr
    added = cli("import", tmp_path / "emb.npy", "--index", index, "--model", MODEL)
    assert added.exit_code == 0 and "3 added, 0 updated, 0 unchanged" in added.stderr
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert [i.id for i in cgx.ls("image")] == built + [max(built) + 1, max(built) + 2, max(built) + 3]


def _stored(index: Path) -> int:
    conn = sqlite3.connect(f"{(index / 'catalog.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    finally:
        conn.close()


@pytest.mark.slow
def test_an_import_killed_mid_write_keeps_whole_batches_and_resumes(tmp_path):
    """kill -9 of the importing process: every row visible afterwards has its vector (the shards are
    checked), dead bytes past the last commit are cut off, and the re-run adds exactly the rest."""
    vectors = rows(400_000, seed=5, dtype=np.float16)
    np.save(tmp_path / "emb.npy", vectors)
    index = tmp_path / "idx"
    code = (
        "import sys; from crossgap_index.ingest import embeddings as e; e.BATCH_ROWS = 5000; "
        "from crossgap_index import CrossGapIndex; "
        f"CrossGapIndex.import_embeddings({str(tmp_path / 'emb.npy')!r}, {str(index)!r}, {MODEL!r})"
    )
    # held when its 11th batch is in the shards but not committed: 10 batches committed, a dead tail after them
    pause, fifo = pause_env(tmp_path, "import-written", 11)
    env = {**os.environ, **pause}
    writer = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.PIPE, env=env)
    held = wait_until_paused(writer, fifo)
    assert _stored(index) == 50_000
    writer.send_signal(signal.SIGKILL)
    writer.communicate()
    os.close(held)
    with CrossGapIndex.open(index, readonly=True) as cgx:  # rows and shards agree, byte for byte
        assert cgx._store.catalog.shard_problems(full=True) == []
        kept = cgx._store.catalog.count("image")
        assert kept == 50_000
        last = cgx._store.catalog_vectors("image", [kept])
        np.testing.assert_allclose(last, unit(vectors[kept - 1 : kept]), atol=1e-3)
    report = CrossGapIndex.import_embeddings(tmp_path / "emb.npy", index, MODEL)
    assert (report.added, report.unchanged) == (400_000 - kept, kept)
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert cgx.check(files=False).ok
        assert cgx.search(vector=unit(vectors[-1:])[0], k=1)[0].id == 400_000
    shard_bytes = sum(p.stat().st_size for p in (index / "vectors").iterdir())
    assert shard_bytes == 400_000 * DIM * 2  # no dead tail left behind, no row written twice
