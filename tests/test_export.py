"""cgx export: Parquet and .npy files equal to what the catalog stores, read a chunk at a time."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import QueryError
from crossgap_index.export import export_index
from crossgap_index.inversion import InversionConfig
from tests.support.photos import MODEL

TEXTS = ["a red square", "a blue circle", "two green triangles"]


@pytest.fixture
def index(tmp_path, photo_folder):
    path = tmp_path / "idx"
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photo_folder])
        cgx.add_texts(TEXTS, ids=["t1", None, "t3"])
        cgx.invert_gallery(InversionConfig(oti_steps=3))
    return path


def stored(index, collection):
    """(ids, vectors) straight from SQLite and the shard files, the oracle for the export."""
    stream = "image-oti" if collection == "image-oti" else "items"
    with sqlite3.connect(index / "catalog.sqlite") as conn:
        if collection == "image-oti":
            sql, args = "SELECT item_id, slot FROM derived_vectors WHERE kind = ? ORDER BY item_id", ("image-oti",)
        else:
            sql, args = "SELECT id, slot FROM items WHERE modality = ? ORDER BY id", (collection,)
        rows = conn.execute(sql, args).fetchall()
    dim = json.loads((index / "manifest.json").read_text())["dim"]
    shard = np.fromfile(index / "vectors" / f"{stream}-000000.f32", np.float32).reshape(-1, dim)
    return np.array([r[0] for r in rows]), np.stack([shard[r[1]] for r in rows])


@pytest.mark.parametrize("chunk", [2, 8192])  # 2: many chunks, keyset pagination across them
def test_parquet_export_equals_the_catalog(tmp_path, index, photo_folder, chunk):
    report = export_index(index, tmp_path / "out", "parquet", chunk=chunk)
    assert report.counts == {"image": 6, "text": 3, "image-oti": 6}
    for collection in report.counts:
        table = pq.read_table(tmp_path / "out" / f"{collection}.parquet")
        ids, vectors = stored(index, collection)
        assert table.column("id").to_pylist() == ids.tolist()
        np.testing.assert_array_equal(np.stack(table.column("vector").to_numpy(zero_copy_only=False)), vectors)
        assert table.schema.metadata[b"crossgap.model"] == MODEL.encode()
    images = pq.read_table(tmp_path / "out" / "image.parquet").to_pylist()
    assert {r["path"] for r in images} == {str(p.resolve()) for p in photo_folder.glob("[ab]/*") if p.is_file()}
    texts = pq.read_table(tmp_path / "out" / "text.parquet").to_pylist()
    assert [(r["text"], r["external_id"], r["modality"]) for r in texts] == [
        ("a red square", "t1", "text"),
        ("a blue circle", None, "text"),
        ("two green triangles", "t3", "text"),
    ]
    summary = json.loads((tmp_path / "out" / "export.json").read_text())
    assert summary["dim"] == vectors.shape[1] and summary["counts"]["image"] == 6


def test_npy_export_through_the_cli(tmp_path, index):
    out = tmp_path / "npy"
    result = CliRunner().invoke(
        app, ["export", "--index", str(index), "--format", "npy", "--collection", "image-oti", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    ids, vectors = stored(index, "image-oti")
    np.testing.assert_array_equal(np.load(out / "image-oti.ids.npy"), ids)
    np.testing.assert_array_equal(np.load(out / "image-oti.vectors.npy"), vectors)
    items = [json.loads(line) for line in (out / "image-oti.items.jsonl").read_text().splitlines()]
    assert [i["id"] for i in items] == ids.tolist() and all(i["modality"] == "image" for i in items)
    assert not (out / "image.vectors.npy").exists()


def test_bad_export_requests_are_one_line(tmp_path, index):
    with pytest.raises(QueryError, match="unknown collection 'images'"):
        export_index(index, tmp_path / "o", "parquet", ["images"])
    result = CliRunner().invoke(app, ["export", "--index", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "no crossgap index" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()
