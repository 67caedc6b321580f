"""The facade's ways in: one ``open`` with ``create=``, ``create`` and ``open_or_create`` as its aliases, and the
few model facts a server needs asked as methods (``encoder``/``searcher`` stay reachable, with a warning)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import IncompatibleModelError, StoreError
from crossgap_index.search.projections import projection_weights
from crossgap_index.store.directory import IndexExistsError
from tests.support.photos import MODEL, write_photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("facade-photos")
    for i in range(3):
        write_photo(root / f"p{i}.png", seed=70 + i)
    return root


@pytest.mark.slow
def test_open_with_create_makes_a_missing_index_then_opens_the_same_one(tmp_path, photos):
    path = tmp_path / "idx"
    with CrossGapIndex.open(path, model=MODEL, device="cpu", create=True) as made:
        made.index_folders([photos])
        ids = [row.id for row in made.ls()]
    assert len(ids) == 3
    with CrossGapIndex.open(path, model=MODEL, device="cpu", create=True) as again:
        assert [row.id for row in again.ls()] == ids  # opened, not made afresh
    with CrossGapIndex.open_or_create(path, model=MODEL, device="cpu") as alias:
        assert [row.id for row in alias.ls()] == ids


def test_open_without_create_refuses_a_missing_index_and_makes_nothing(tmp_path):
    with pytest.raises(StoreError):
        CrossGapIndex.open(tmp_path / "absent", device="cpu")
    assert not (tmp_path / "absent" / "manifest.json").exists()


def test_create_refuses_an_index_that_is_there(tmp_path):
    path = tmp_path / "idx"
    CrossGapIndex.create(path, model=MODEL, device="cpu").close()
    with pytest.raises(IndexExistsError):
        CrossGapIndex.create(path, model=MODEL, device="cpu")


def test_the_aliases_pass_the_factory_to_a_new_index(tmp_path):
    with CrossGapIndex.open_or_create(tmp_path / "a", model=MODEL, device="cpu", factory="HNSW32") as a:
        assert a.info().factories["image"] == "HNSW32"
    with CrossGapIndex.create(tmp_path / "b", model=MODEL, device="cpu", factory="HNSW32") as b:
        assert b.info().factories["image"] == "HNSW32"
    with CrossGapIndex.open(tmp_path / "c", model=MODEL, device="cpu", create=True) as c:
        assert c.info().factories["image"] != "HNSW32"  # open(create=True) makes the automatic choice


def test_open_refuses_another_model_and_releases_the_files(tmp_path):
    path = tmp_path / "idx"
    CrossGapIndex.create(path, model=MODEL, device="cpu").close()
    with pytest.raises(StoreError, match="was built with model"):
        CrossGapIndex.open(path, model="crossgap-small", device="cpu", create=True)
    with CrossGapIndex.open(path, device="cpu") as index:  # the refused open left no lock or handle behind
        index.add_texts(["a red circle"])


def test_model_facts_equal_what_the_model_itself_says(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        index.load_model()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            encoder = index.encoder
        assert index.model_input_size() == encoder.input_size
        try:
            for modality in ("image", "text"):
                projection_weights(encoder.loaded.model, modality)
            linear = True
        except IncompatibleModelError:
            linear = False
        assert index.has_linear_projections() is linear


@pytest.mark.slow
def test_encoder_and_searcher_are_reachable_with_a_deprecation_warning(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL, device="cpu") as index:
        with pytest.warns(DeprecationWarning, match="encoder"):
            encoder = index.encoder
        with pytest.warns(DeprecationWarning, match="searcher"):
            searcher = index.searcher
        assert encoder is index._runtime.encoder and searcher is index._runtime.searcher
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # the methods that replace them do not warn
            index.load_model()
            index.model_input_size()
            index.has_linear_projections()
            index.add_texts(["a blue square"])
            assert index.search(text="a blue square", target="texts", k=1)
