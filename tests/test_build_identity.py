"""Ids that never move: a build keeps an item's id across an edit, a move or rename, and over the files behind
imported rows; a removed item's id is never handed out again. Real files, SQLite and FAISS."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from tests.support.photos import MODEL, write_photo


def build(index_path, folder, **kwargs):
    with CrossGapIndex.open_or_create(index_path, model=MODEL, device="cpu") as cgx:
        return cgx.index_folders([folder], **kwargs)


def ids_by_path(index_path) -> dict[str, int]:
    with CrossGapIndex.open(index_path, device="cpu") as cgx:
        return {item.path: item.id for item in cgx.ls("image")}


def top_hit(index_path, image, files: bool = True) -> tuple[int, float]:
    """The top hit of ``image`` (id, score), after `cgx check` says the index is sound (``files``: and every
    indexed file is on disk)."""
    with CrossGapIndex.open(index_path, device="cpu") as cgx:
        hit = cgx.search(image=image, k=1)[0]
        assert cgx.check(files=files).ok
    return hit.id, hit.score


@pytest.fixture
def folder(tmp_path):
    for i in range(6):
        write_photo(tmp_path / "photos" / f"p{i}.png", seed=i)
    return tmp_path / "photos"


def test_an_edited_file_keeps_its_id_and_gets_its_new_vector(tmp_path, folder):
    index = tmp_path / "idx"
    build(index, folder)
    before = ids_by_path(index)
    edited = folder / "p2.png"
    write_photo(edited, seed=77)  # same path, new content
    report = build(index, folder)
    assert (report.updated, report.added, report.removed, report.embedded) == (1, 0, 0, 1)
    assert ids_by_path(index) == before
    hit_id, score = top_hit(index, edited)  # its new content finds it, under its old id
    assert hit_id == before[str(edited.resolve())] and score == pytest.approx(1.0, abs=1e-5)
    write_photo(tmp_path / "old.png", seed=2)  # the old content is no longer stored under any id
    assert top_hit(index, tmp_path / "old.png")[1] < 0.999


def test_an_edit_to_the_content_of_another_file_reuses_its_vector_and_keeps_the_id(tmp_path, folder):
    index = tmp_path / "idx"
    build(index, folder)
    before = ids_by_path(index)
    shutil.copy(folder / "p0.png", folder / "p1.png")  # p1 now holds p0's bytes
    report = build(index, folder)
    assert (report.updated, report.embedded, report.reused) == (1, 0, 1)
    assert ids_by_path(index) == before


def test_a_moved_or_renamed_file_keeps_its_id(tmp_path, folder):
    index = tmp_path / "idx"
    build(index, folder)
    before = ids_by_path(index)
    (folder / "sub").mkdir()
    os.rename(folder / "p1.png", folder / "sub" / "moved.png")  # moved into a subfolder
    os.rename(folder / "p3.png", folder / "renamed.png")  # renamed in place
    report = build(index, folder)
    assert (report.moved, report.added, report.removed, report.embedded) == (2, 0, 0, 0)
    after = ids_by_path(index)
    assert after[str((folder / "sub" / "moved.png").resolve())] == before[str((folder / "p1.png").resolve())]
    assert after[str((folder / "renamed.png").resolve())] == before[str((folder / "p3.png").resolve())]
    assert sorted(after.values()) == sorted(before.values())
    hit_id, _ = top_hit(index, folder / "renamed.png")
    assert hit_id == before[str((folder / "p3.png").resolve())]


def test_a_deleted_file_added_back_gets_a_new_id_and_ids_are_never_reused(tmp_path, folder):
    index = tmp_path / "idx"
    build(index, folder)
    before = ids_by_path(index)
    kept = tmp_path / "kept.png"
    shutil.move(folder / "p5.png", kept)  # out of the built folder: removed
    assert build(index, folder).removed == 1
    shutil.move(kept, folder / "p5.png")
    report = build(index, folder)
    assert report.added == 1
    new_id = ids_by_path(index)[str((folder / "p5.png").resolve())]
    assert new_id > max(before.values())  # the removed id is not handed out again
    (folder / "p5.png").unlink()
    build(index, folder)
    write_photo(folder / "later.png", seed=99)
    build(index, folder)
    assert ids_by_path(index)[str((folder / "later.png").resolve())] > new_id


def test_a_build_over_imported_rows_keeps_their_ids_captions_and_vectors(tmp_path, folder):
    """Imported rows whose paths are files: the build adopts the files (their stat recorded, nothing read); ids,
    captions and the imported vectors stay, the same import runs again changing nothing, and a later edit of
    such a file re-embeds it under the same id."""
    index = tmp_path / "idx"
    paths = sorted(str(p.resolve()) for p in folder.glob("*.png"))[:4]
    paths.append(str(folder.resolve() / "elsewhere" / "not-here.png"))  # a file of the import's, not on this disk
    vectors = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(tmp_path / "emb.npy", vectors)
    with (tmp_path / "meta.jsonl").open("w") as f:
        for i, path in enumerate(paths):
            f.write(json.dumps({"id": 1000 + i, "path": path, "caption": f"caption {i}"}) + "\n")
    CrossGapIndex.import_embeddings(tmp_path / "emb.npy", index, MODEL, meta=tmp_path / "meta.jsonl")

    report = build(index, folder)
    assert (report.adopted, report.added, report.embedded, report.removed) == (4, 2, 2, 0)
    with CrossGapIndex.open(index, device="cpu") as cgx:
        items = {item.path: item for item in cgx.ls("image")}
        assert [items[p].id for p in paths] == [1000, 1001, 1002, 1003, 1004]  # the one not on disk stays too
        assert [items[p].text for p in paths] == [f"caption {i}" for i in range(5)]
        for i in range(5):  # the imported vectors are the ones stored
            hit = cgx.search(vector=vectors[i], k=1)[0]
            assert hit.id == 1000 + i and hit.score == pytest.approx(1.0, abs=1e-5)
        assert cgx.check(files=False).ok
    again = build(index, folder)  # the adopted files are unchanged now
    assert (again.unchanged, again.adopted, again.embedded) == (6, 0, 0)
    reimport = CrossGapIndex.import_embeddings(tmp_path / "emb.npy", index, MODEL, meta=tmp_path / "meta.jsonl")
    assert (reimport.added, reimport.unchanged) == (0, 5)
    assert [ids_by_path(index)[p] for p in paths] == [1000, 1001, 1002, 1003, 1004]

    write_photo(folder / "p0.png", seed=500)  # an edit after adoption: embedded by the index's model, same id
    edited = build(index, folder)
    assert (edited.updated, edited.embedded) == (1, 1)
    assert ids_by_path(index)[paths[0]] == 1000
    assert top_hit(index, folder / "p0.png", files=False) == (1000, pytest.approx(1.0, abs=1e-5))


def test_an_edit_replaces_the_gallery_inversion_of_that_item(tmp_path, folder):
    from crossgap_index.inversion import InversionConfig

    index = tmp_path / "idx"
    config = InversionConfig(oti_steps=2)
    with CrossGapIndex.create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([folder])
        assert cgx.invert_gallery(config) == 6
    write_photo(folder / "p4.png", seed=404)
    with CrossGapIndex.open(index, device="cpu") as cgx:
        cgx.index_folders([folder])
        assert cgx.info().counts["image-oti"] == 5  # the edited item's old feature is gone
        assert cgx.invert_gallery() == 1  # only the edited item is inverted again
        assert cgx.info().counts["image-oti"] == 6
        assert cgx.check().ok
