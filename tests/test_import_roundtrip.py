"""`cgx export` then `cgx import` of the export into a fresh index, then `cgx export` again: the same ids,
modalities (texts stay texts), paths, texts, external ids, vectors and gallery inversions, for both formats;
what cannot come back on its own (a gallery inversion's file without its items) is refused."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from crossgap_index.inversion import InversionConfig
from tests.support.photos import MODEL, write_photo

pytestmark = pytest.mark.slow  # export -> import -> export through the CLI in fresh interpreters

runner = CliRunner()


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def index(tmp_path, photo_folder):
    path = tmp_path / "idx"
    with CrossGapIndex.create(path, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([photo_folder])
        cgx.add_texts(["a red square", "a blue circle", "two green triangles"], ids=["t1", None, "t3"])
        cgx.invert_gallery(InversionConfig(oti_steps=3))
    return path


def exported(folder, fmt: str) -> dict:
    """Every collection of an export as plain values: ids, per-item metadata, vectors; and export.json."""
    summary = json.loads((folder / "export.json").read_text())
    out = {"counts": summary["counts"], "inversions": summary["inversions"], "model": summary["model"]}
    for name in summary["counts"]:
        if fmt == "parquet":
            table = pq.read_table(folder / f"{name}.parquet")
            meta = table.drop_columns(["vector"]).to_pylist()
            vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        else:
            meta = [json.loads(line) for line in (folder / f"{name}.items.jsonl").read_text().splitlines()]
            vectors = np.load(folder / f"{name}.vectors.npy")
            assert np.load(folder / f"{name}.ids.npy").tolist() == [m["id"] for m in meta]
        out[name] = (meta, vectors)
    return out


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_export_import_export_gives_the_same_index(tmp_path, index, fmt):
    first = tmp_path / "first"
    assert cli("export", "--index", index, "--format", fmt, "--out", first, "-q").exit_code == 0
    result = cli("import", first, "--index", tmp_path / "again", "--model", MODEL)
    assert result.exit_code == 0, result.output
    assert "9 rows: 9 added, 0 updated, 0 unchanged, 6 derived vectors" in result.stderr
    second = tmp_path / "second"
    assert cli("export", "--index", tmp_path / "again", "--format", fmt, "--out", second, "-q").exit_code == 0
    before, after = exported(first, fmt), exported(second, fmt)
    assert before["counts"] == after["counts"] == {"image": 6, "text": 3, "image-oti": 6}
    assert after["inversions"] == before["inversions"] and before["inversions"]["gallery_inversion"]["oti_steps"] == 3
    for name in ("image", "text", "image-oti"):
        assert after[name][0] == before[name][0]  # ids, modality, path (and its bytes), text, external id
        np.testing.assert_array_equal(after[name][1], before[name][1])
    texts = before["text"][0]
    assert [(t["modality"], t["text"], t["external_id"], t["path"]) for t in texts] == [
        ("text", "a red square", "t1", None),
        ("text", "a blue circle", None, None),
        ("text", "two green triangles", "t3", None),
    ]
    with CrossGapIndex.open(tmp_path / "again", readonly=True) as cgx:
        report = cgx.check()
        assert report.ok, report.problems
        assert cgx.gallery_inversion == before["inversions"]["gallery_inversion"]
        text = cgx.ls("text")[0]
        assert (text.text, text.external_id) == ("a red square", "t1")
    again = cli("import", first, "--index", tmp_path / "again", "--model", MODEL)
    assert again.exit_code == 0 and "9 rows: 0 added, 0 updated, 9 unchanged" in again.stderr


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_a_gallery_inversion_alone_is_refused_not_made_into_items(tmp_path, index, fmt):
    out = tmp_path / "out"
    assert cli("export", "--index", index, "--format", fmt, "--out", out, "-q").exit_code == 0
    if fmt == "parquet":
        args = [out / "image-oti.parquet"]
        renamed = out / "features.parquet"  # the table's own metadata still says what it is
        (out / "image-oti.parquet").rename(renamed)
        other = cli("import", renamed, "--index", tmp_path / "new2", "--model", MODEL)
        assert other.exit_code == 1 and "image-oti vectors of a cgx export" in other.stderr
        renamed.rename(out / "image-oti.parquet")
    else:
        args = [out / "image-oti.vectors.npy", "--meta", out / "image-oti.items.jsonl"]
    result = cli("import", *args, "--index", tmp_path / "new", "--model", MODEL)
    assert result.exit_code == 1
    assert "the image-oti vectors of a cgx export (features of items, not items)" in result.stderr
    assert not (tmp_path / "new").exists()


def test_an_export_of_another_model_is_refused(tmp_path, index):
    out = tmp_path / "out"
    assert cli("export", "--index", index, "--out", out, "-q").exit_code == 0
    result = cli("import", out, "--index", tmp_path / "new", "--model", "crossgap-small")
    assert result.exit_code == 1 and f"exported from an index of model '{MODEL}', not 'crossgap-small'" in result.stderr


@pytest.mark.parametrize("fmt", ["parquet", "npy"])
def test_a_file_name_that_is_not_utf8_comes_back_byte_for_byte(tmp_path, fmt):
    folder = tmp_path / "photos"
    folder.mkdir()
    odd = folder / os.fsdecode(b"caf\xe9-\xff.png")
    write_photo(odd, seed=1)
    write_photo(folder / "plain.png", seed=2)
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as cgx:
        cgx.index_folders([folder])
    out = tmp_path / "out"
    assert cli("export", "--index", tmp_path / "idx", "--format", fmt, "--out", out, "-q").exit_code == 0
    result = cli("import", out, "--index", tmp_path / "again", "--model", MODEL)
    assert result.exit_code == 0, result.output
    with CrossGapIndex.open(tmp_path / "again", readonly=True) as cgx:
        paths = sorted(os.fsencode(i.path) for i in cgx.ls("image"))
        assert paths == sorted([os.fsencode(odd.resolve()), os.fsencode((folder / "plain.png").resolve())])
        assert cgx.check().ok  # the files are found under their own names
