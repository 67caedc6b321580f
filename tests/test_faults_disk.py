"""A full disk or file-size limit in the middle of a write: add-texts, a FAISS write and export each say so in one
line, exit 1, leave no partial file, and keep everything committed before (a real tmpfs filled up).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.store.catalog import header_shortfall, wal_has_frames
from tests.support.faults import build, cli, corpus_lines, fill, one_line, photos, resize, stored_items
from tests.support.photos import MODEL


# -- a full disk during add-texts leaves an index that opens, searches and repairs
@pytest.mark.slow
def test_full_disk_during_add_texts_is_one_line_and_the_index_survives(tmp_path, small_disk):
    built = tmp_path / "idx"
    build(built, photos(tmp_path / "photos", 6))
    index = Path(shutil.copytree(built, small_disk / "idx"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines(20_000)) + "\n")

    added = cli("add-texts", corpus, "--index", index, "-q")
    assert added.exit_code == 1
    assert "disk full" in one_line(added.output)  # was: internal error: OperationalError
    committed = stored_items(index, "text")
    assert committed > 0  # batches before the disk filled up are kept
    # The state a full disk leaves: the interrupted checkpoint left the header ahead of the file, the WAL holds the rest
    catalog = index / "catalog.sqlite"
    assert header_shortfall(catalog) > 0 and wal_has_frames(catalog)

    resize(small_disk, "20m")  # space freed
    checked = cli("check", "--index", index)  # was: "damaged catalog ... restore it from a backup"
    assert checked.exit_code == 0, checked.output
    assert "checkpoint was interrupted" in checked.output
    repaired = cli("check", "--index", index, "--repair")
    assert repaired.exit_code == 0, repaired.output
    assert "completed the checkpoint" in repaired.output
    assert header_shortfall(catalog) == 0 and not wal_has_frames(catalog)

    with CrossGapIndex.open(index) as cgx:
        assert cgx.info().counts["text"] == committed
        hits = cgx.search(text="document number 3", target="texts", k=5)
        assert len(hits) == 5
        assert cgx.check().ok


# -- a full disk during a FAISS write: named, no *.faiss.tmp, exit 1
@pytest.mark.slow
def test_full_disk_during_a_faiss_write_is_named_and_cleaned_up(tmp_path, small_disk):
    resize(small_disk, "4m")
    built = tmp_path / "idx"
    build(built, photos(tmp_path / "photos", 6), corpus_lines(1000))
    index = Path(shutil.copytree(built, small_disk / "idx"))
    assert (index / "text.faiss").stat().st_size > 200_000  # the file the next save rewrites
    filler = fill(small_disk, leave=150_000)  # room for new catalog rows, not for text.faiss again

    more = photos(tmp_path / "more", 3, first=100)
    result = cli("build-index", more, "--index", index, "--model", MODEL, "--device", "cpu", "-q")
    assert result.exit_code == 1  # was 2, "internal error: RuntimeError"
    assert "disk full" in one_line(result.output)
    assert not list(index.glob("*.tmp"))  # was: text.faiss.tmp left behind

    filler.unlink()
    with CrossGapIndex.open(index) as cgx:  # the catalog committed the new images; FAISS is rebuilt from it
        counts = cgx.info().counts
        assert (counts["image"], counts["text"]) == (9, 1000)
        assert len(cgx.search(text="document number 3", target="texts", k=4)) == 4
        assert cgx.check().ok


# -- export of non-UTF-8 file names; files written beside and renamed at the end
def test_export_keeps_non_utf8_file_names_and_never_leaves_partial_files(tmp_path):
    folder = photos(tmp_path / "photos", 3)
    odd = Path(os.fsdecode(bytes(folder) + b"/\xff\xfe-caf\xe9.png"))  # latin-1 bytes, not UTF-8
    shutil.copy(folder / "p0000.png", odd)
    index = tmp_path / "idx"
    build(index, folder)

    parquet = cli("export", "--index", index, "--out", tmp_path / "pq", "--format", "parquet")
    assert parquet.exit_code == 0, parquet.output  # was: internal error
    rows = pq.read_table(tmp_path / "pq" / "image.parquet").to_pylist()
    assert {r["path_bytes"] for r in rows} == {bytes(p) for p in folder.iterdir()}
    assert any(r["path"].endswith("\\xff\\xfe-caf\\xe9.png") for r in rows)

    npy = cli("export", "--index", index, "--out", tmp_path / "npy", "--format", "npy")
    assert npy.exit_code == 0, npy.output
    items = [json.loads(line) for line in (tmp_path / "npy" / "image.items.jsonl").read_text().splitlines()]
    assert {os.fsencode(item["path"]) for item in items} == {bytes(p) for p in folder.iterdir()}
    assert np.load(tmp_path / "npy" / "image.vectors.npy").shape == (4, 64)
    assert not [p for p in (tmp_path / "npy").iterdir() if p.name.endswith(".tmp")]


def test_export_that_runs_out_of_disk_leaves_no_partial_files(tmp_path, small_disk):
    index = tmp_path / "idx"
    build(index, photos(tmp_path / "photos", 6), corpus_lines(1000))
    out = small_disk / "export"
    fill(small_disk, leave=60_000)  # image.parquet fits, text.parquet does not
    failed = cli("export", "--index", index, "--out", out, "--format", "parquet")
    assert failed.exit_code == 1
    assert "disk full" in one_line(failed.output)
    assert list(out.iterdir()) == []  # was: image.parquet and a partial text.parquet left behind
