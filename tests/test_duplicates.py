"""Near-duplicate groups (search/duplicates.py, `cgx duplicates`): chunked FAISS range search against the
brute-force twin, and the command's table, JSON and contact sheet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.errors import QueryError
from crossgap_index.search.duplicates import UnionFind, brute_force_groups, duplicate_groups
from tests.support.photos import MODEL, make_photo_folder

DIM = 64  # tiny-random's embed_dim
runner = CliRunner()


def planted_vectors(n: int, groups: int, seed: int = 0) -> tuple[np.ndarray, list[list[int]]]:
    """``n`` random unit vectors, the last ones near-copies (small noise) of ``groups`` originals: 1 to 3 each."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    planted, row = [], n - 1
    for g in range(groups):
        members = [g]
        for _ in range(1 + g % 3):
            vectors[row] = vectors[g] + 0.05 * np.linalg.norm(vectors[g]) / np.sqrt(DIM) * rng.standard_normal(DIM)
            members.append(row)
            row -= 1
        planted.append(sorted(m + 1 for m in members))  # imported ids are rows + 1
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), planted


@pytest.mark.slow
@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_chunked_range_search_equals_the_brute_force_groups(tmp_path, factory):
    vectors, planted = planted_vectors(5000, 60)
    np.save(tmp_path / "emb.npy", vectors)
    CrossGapIndex.import_embeddings(tmp_path / "emb.npy", tmp_path / "idx", MODEL, factory=factory)
    ids = np.arange(1, len(vectors) + 1)
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx:
        for threshold in (0.9, 0.5):
            want = brute_force_groups(ids, vectors, threshold)
            assert duplicate_groups(cgx._store, threshold, chunk=700) == want  # 8 chunks, the last one short
        assert sorted(duplicate_groups(cgx._store, 0.9)) == sorted(planted)
        groups = cgx.duplicates(0.9)
        assert [[row.id for row in group] for group in groups] == brute_force_groups(ids, vectors, 0.9)


def test_a_threshold_that_links_everything_is_refused_not_held(tmp_path, monkeypatch):
    from crossgap_index.search import duplicates

    np.save(tmp_path / "emb.npy", planted_vectors(300, 3)[0])
    CrossGapIndex.import_embeddings(tmp_path / "emb.npy", tmp_path / "idx", MODEL)
    monkeypatch.setattr(duplicates, "MAX_CHUNK_PAIRS", 1000)  # random vectors: about half of 300 x 300 score > 0
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx, pytest.raises(QueryError, match="raise the"):
        cgx.duplicates(0.0001)


def test_union_find_joins_chains_and_orders_groups():
    joined = UnionFind()
    for a, b in [(5, 6), (1, 2), (2, 3), (9, 8), (3, 1)]:
        joined.union(a, b)
    assert joined.groups() == [[1, 2, 3], [5, 6], [8, 9]]


@pytest.mark.parametrize("threshold", [0, -0.5, 1.5, "x", float("nan")])
def test_a_threshold_outside_0_1_is_refused(tmp_path, threshold):
    np.save(tmp_path / "emb.npy", planted_vectors(20, 1)[0])
    CrossGapIndex.import_embeddings(tmp_path / "emb.npy", tmp_path / "idx", MODEL)
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx, pytest.raises(QueryError, match="threshold"):
        cgx.duplicates(threshold)


@pytest.fixture(scope="module")
def photo_index(tmp_path_factory) -> tuple[Path, Path]:
    """conftest's photos (tiny-random vectors: noise photos all alike) plus copies of a/img0.png: the same pixels
    in another file, and a full-quality JPEG."""
    root = tmp_path_factory.mktemp("dups")
    photos = make_photo_folder(root)
    (photos / "copies").mkdir()
    with Image.open(photos / "a" / "img0.png") as image:
        image.save(photos / "copies" / "img0-again.png")
        image.convert("RGB").save(photos / "copies" / "img0.jpg", quality=100, subsampling=0)
    with CrossGapIndex.create(root / "idx", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photos])
    return root / "idx", photos


@pytest.mark.slow
def test_cli_table_json_and_sheet(photo_index, tmp_path):
    index, photos = photo_index
    args = ["duplicates", "--index", str(index), "--threshold", "0.9999", "--json", "--sheet", str(tmp_path / "d.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    groups = json.loads(result.stdout)
    names = [sorted(Path(item["path"]).name for item in group) for group in groups]
    assert any({"img0-again.png", "img0.png"} <= set(group) for group in names)  # the same pixels: the same vector
    assert not any("img1.png" in group for group in names)
    assert all(set(item) == {"id", "path"} for group in groups for item in group)
    assert "groups of near-duplicates" in result.stderr
    with Image.open(tmp_path / "d.png") as sheet:
        assert sheet.height >= len(groups) * 96
    table = runner.invoke(app, ["duplicates", "--index", str(index), "--threshold", "0.9999"])
    assert table.exit_code == 0 and "img0-again.png" in table.stdout and "near-duplicate images" in table.stdout
    bad = runner.invoke(app, ["duplicates", "--index", str(index), "--threshold", "2"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
