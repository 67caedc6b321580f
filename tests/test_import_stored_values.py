"""What an import stores is what every reader can show: Parquet ``binary`` captions (Spark's strings) are
decoded as UTF-8 so `ls`, `query` (--json, --paths-only), `export` and GET /items/N work; URL paths are
references, never "missing files" for `cgx check` or `remove --missing`; integers past SQLite's range are a
422 or one line at the edge, never a 500 or an internal error."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.server.settings import ServeSettings
from tests.support.photos import MODEL
from tests.support.serve import running_server

pytestmark = pytest.mark.slow  # imports and every reader (ls, query, export, HTTP) in fresh interpreters

DIM = 64
runner = CliRunner()
PATHS = ["https://example.com/a.jpg", "s3://bucket/b.jpg", "gs://bucket/c.jpg", "/nonexistent/gone.jpg"]
CAPTIONS = ["café au lait", "a red bicycle", "snow", "a lost file"]


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def index(tmp_path):
    v = np.random.default_rng(0).standard_normal((4, DIM)).astype(np.float32)
    captions = pa.array([c.encode() for c in CAPTIONS], pa.binary())
    columns = {"embedding": pa.array(list(v), pa.list_(pa.float32())), "path": PATHS, "caption": captions}
    pq.write_table(pa.table(columns), tmp_path / "spark.parquet")
    result = cli("import", tmp_path / "spark.parquet", "--index", tmp_path / "idx", "--model", MODEL)
    assert result.exit_code == 0, result.output
    return tmp_path / "idx"


def test_binary_captions_are_stored_as_text_every_reader_shows(tmp_path, index):
    listed = cli("ls", "--index", index)
    assert listed.exit_code == 0 and [line.split("\t")[2] for line in listed.stdout.splitlines()] == PATHS
    found = cli("query", "café", "--index", index, "--json", "-k", "4")
    assert found.exit_code == 0, found.output
    assert {hit["text"] for hit in json.loads(found.stdout)["hits"]} == set(CAPTIONS)
    paths = cli("query", "café", "--index", index, "--paths-only", "-0", "-k", "4")
    assert paths.exit_code == 0 and set(paths.stdout.split("\0")[:-1]) == set(PATHS)
    assert cli("export", "--index", index, "--out", tmp_path / "out", "-q").exit_code == 0
    assert pq.read_table(tmp_path / "out" / "image.parquet").column("text").to_pylist() == CAPTIONS
    with CrossGapIndex.open(index, readonly=True) as cgx, running_server(cgx, ServeSettings()) as url:
        item = httpx.get(f"{url}/items/1", timeout=30)
        assert item.status_code == 200 and item.json()["text"] == "café au lait"
        for after in ("1" * 23, str(2**63)):
            page = httpx.get(f"{url}/browse", params={"after": after}, timeout=30)
            assert page.status_code == 422, page.text
        last = httpx.get(f"{url}/browse", params={"after": str(2**63 - 1)}, timeout=30)
        assert last.status_code == 200 and last.json()["items"] == []


def test_url_paths_are_references_not_missing_files(index):
    checked = cli("check", "--index", index)
    assert checked.exit_code == 1 and "1 indexed image files are gone" in checked.output
    removed = cli("remove", "--missing", "--index", index)
    assert removed.exit_code == 0 and "removed 1 items" in removed.stderr
    with CrossGapIndex.open(index, readonly=True) as cgx:
        assert [i.path for i in cgx.ls("image")] == PATHS[:3]
    assert cli("check", "--index", index).exit_code == 0


def test_ids_past_sqlites_range_are_one_line(index):
    result = cli("remove", "--id", "1" * 20, "--index", index)
    assert result.exit_code == 1 and "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"cgx: error: no item with id {'1' * 20}: ids are integers 1..{2**63 - 1} (2**63 - 1)"]
