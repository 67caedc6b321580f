"""Building and rebuilding an index through the library API, on real files, FAISS and SQLite."""

import json
import os
import shutil

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import StoreError
from crossgap_index.store.catalog import Catalog
from tests.support.photos import MODEL, write_broken_files, write_photo


def build(index_path, folder, **kwargs):
    with CrossGapIndex.open_or_create(index_path, model=MODEL, device="cpu") as cgx:
        return cgx.index_folders([folder], **kwargs)


def stored_paths(index_path):
    catalog = Catalog(index_path / "catalog.sqlite")
    try:
        return sorted(r.path for r in catalog.images().values())
    finally:
        catalog.close()


def test_build_skips_broken_files_and_finds_its_own_photo(tmp_path, photo_folder):
    broken = write_broken_files(photo_folder / "broken")
    report = build(tmp_path / "idx", photo_folder, max_megapixels=5)
    assert report.added == 6 and report.embedded == 6
    assert sorted(p for p, _ in report.skipped) == sorted(str(p.resolve()) for p in broken.values())
    with CrossGapIndex.open(tmp_path / "idx", device="cpu") as cgx:
        query = photo_folder / "a" / "img3.png"
        hits = cgx.search(image=query, k=3)
        assert hits[0].path == str(query.resolve())
        assert hits[0].score == pytest.approx(1.0, abs=1e-5)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_rebuild_embeds_only_what_changed(tmp_path, photo_folder):
    index = tmp_path / "idx"
    build(index, photo_folder)
    unchanged = build(index, photo_folder)
    assert (unchanged.embedded, unchanged.added, unchanged.unchanged) == (0, 0, 6)

    write_photo(photo_folder / "a" / "new.png", seed=100)  # added
    write_photo(photo_folder / "a" / "img0.png", seed=101)  # modified content
    (photo_folder / "a" / "img1.png").unlink()  # deleted
    os.rename(photo_folder / "a" / "img2.png", photo_folder / "b" / "moved.png")  # renamed
    shutil.copy(photo_folder / "a" / "img3.png", photo_folder / "b" / "copy.png")  # duplicate
    os.utime(photo_folder / "a" / "img4.png", ns=(1, 1))  # touched, same bytes

    report = build(index, photo_folder)
    assert report.embedded == 2  # new.png and the modified img0.png only
    assert (report.added, report.updated, report.reused, report.moved) == (2, 1, 1, 1)  # copy.png reuses img3's
    assert report.removed == 1  # img1 deleted (img2 moved: it keeps its id)
    expected = sorted(
        str(p.resolve())
        for p in photo_folder.rglob("*")
        if p.suffix.lower() in (".png", ".jpg") and ".hidden" not in p.parts and "node_modules" not in p.parts
    )
    assert stored_paths(index) == expected
    again = build(index, photo_folder)
    assert again.embedded == 0 and again.unchanged == len(expected)


def test_only_paths_under_the_built_roots_are_pruned(tmp_path, photo_folder):
    other = tmp_path / "other"
    write_photo(other / "x.png", seed=50)
    build(tmp_path / "idx", photo_folder)
    build(tmp_path / "idx", other)
    assert len(stored_paths(tmp_path / "idx")) == 7


def test_interrupted_build_resumes_without_loss_or_duplicates(tmp_path, photo_folder):
    index = tmp_path / "idx"

    def explode_after_first_batch(done, total):
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build(index, photo_folder, batch_size=2, progress=explode_after_first_batch)
    assert len(stored_paths(index)) == 2  # the committed chunk survived

    report = build(index, photo_folder, batch_size=2)
    assert report.embedded == 4 and report.unchanged == 2
    with CrossGapIndex.open(index, device="cpu") as cgx:
        info = cgx.info()
    assert info.counts["image"] == 6
    assert len(set(stored_paths(index))) == 6


def test_faiss_file_lost_after_a_crash_is_rebuilt_from_the_catalog(tmp_path, photo_folder):
    index = tmp_path / "idx"
    build(index, photo_folder)
    (index / "image.faiss").unlink()
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["generation"] -= 1  # as if the process died between catalog commit and FAISS save
    (index / "manifest.json").write_text(json.dumps(manifest))
    with CrossGapIndex.open(index, device="cpu") as cgx:
        hits = cgx.search(image=photo_folder / "a" / "img1.png", k=1)
    assert hits[0].path.endswith("img1.png")


def test_model_mismatch_and_newer_schema_are_clear_errors(tmp_path, photo_folder):
    index = tmp_path / "idx"
    build(index, photo_folder)
    with pytest.raises(StoreError, match="built with model 'tiny-random'"):
        CrossGapIndex.open(index, model="ViT-B-32/openai")
    manifest = json.loads((index / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (index / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="newer than this crossgap-index"):
        CrossGapIndex.open(index)


def test_approximate_index_matches_exact_search(tmp_path, photo_folder):
    for i in range(40):
        write_photo(photo_folder / "many" / f"m{i}.png", seed=200 + i)
    build(tmp_path / "flat", photo_folder)
    with CrossGapIndex.create(tmp_path / "ivf", model=MODEL, device="cpu", factory="IVF4,Flat") as cgx:
        cgx.index_folders([photo_folder])
        assert cgx.info().factories["image"] == "IVF4,Flat"
        ivf_hits = cgx.search(image=photo_folder / "many" / "m7.png", k=10)
    with CrossGapIndex.open(tmp_path / "flat", device="cpu") as cgx:
        flat_hits = cgx.search(image=photo_folder / "many" / "m7.png", k=10)
    assert [h.id for h in ivf_hits] == [h.id for h in flat_hits]
    np.testing.assert_allclose([h.score for h in ivf_hits], [h.score for h in flat_hits], atol=1e-5)


def test_texts_are_deduplicated_and_searchable(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as cgx:
        report = cgx.add_texts(["a red bicycle", "a blue car", "a red bicycle"], ids=["b1", "c1", "b2"])
        assert (report.added, report.duplicates) == (2, 1)
        assert cgx.add_texts(["a blue car"]).duplicates == 1
        hits = cgx.search(text="a blue car", target="texts", k=2)
    assert hits[0].text == "a blue car" and hits[0].external_id == "c1"


def test_remove_by_id(tmp_path, photo_folder):
    build(tmp_path / "idx", photo_folder)
    with CrossGapIndex.open(tmp_path / "idx", device="cpu") as cgx:
        victim = cgx.search(image=photo_folder / "a" / "img2.png", k=1)[0]
        cgx.remove([victim.id])
        assert all(h.id != victim.id for h in cgx.search(image=photo_folder / "a" / "img2.png", k=6))
        assert cgx.info().counts["image"] == 5
