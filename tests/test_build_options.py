"""A build's file settings as one BuildOptions value or as keywords: the same build either way, keywords override
the value, and a misspelled setting is refused before anything is read."""

from __future__ import annotations

import pytest

from crossgap_index import BuildOptions, CrossGapIndex
from crossgap_index.demo import run_demo
from tests.support.photos import MODEL, write_photo


def _folder(root):
    for i in range(3):
        write_photo(root / "photos" / f"p{i}.png", seed=90 + i)
    write_photo(root / "photos" / ".hidden" / "h.png", seed=99)
    write_photo(root / "photos" / "drafts" / "d.png", seed=98)
    return root / "photos"


def _paths(index) -> list[str]:
    return sorted(row.path.rsplit("photos/", 1)[1] for row in index.ls("image"))


@pytest.mark.slow
def test_a_value_and_keywords_build_the_same_and_keywords_override(tmp_path):
    photos = _folder(tmp_path)
    options = BuildOptions(include_hidden=True, exclude=("drafts",), batch_size=2, workers=1)
    with CrossGapIndex.create(tmp_path / "a", model=MODEL, device="cpu") as a:
        a.index_folders([photos], options)
        by_value = _paths(a)
    with CrossGapIndex.create(tmp_path / "b", model=MODEL, device="cpu") as b:
        b.index_folders([photos], include_hidden=True, exclude=["drafts"], batch_size=2, workers=1)
        by_keywords = _paths(b)
    with CrossGapIndex.create(tmp_path / "c", model=MODEL, device="cpu") as c:
        c.index_folders([photos], options, include_hidden=False)
        overridden = _paths(c)
    assert by_value == by_keywords == [".hidden/h.png", "p0.png", "p1.png", "p2.png"]
    assert overridden == ["p0.png", "p1.png", "p2.png"]


def test_a_misspelled_setting_is_refused_before_anything_is_read(tmp_path):
    photos = _folder(tmp_path)
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        with pytest.raises(TypeError, match="include_hiden"):
            index.index_folders([photos], include_hiden=True)
        with pytest.raises(TypeError, match="batchsize"):
            index.sync_paths([photos / "p0.png"], [photos], batchsize=2)
        assert index.ls() == []
    with pytest.raises(TypeError, match="n_image"):
        run_demo(tmp_path / "demo", n_image=3)
    assert not (tmp_path / "demo").exists()
