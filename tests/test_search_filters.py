"""Filters (search/filters.py): every mode x filter returns the ``k`` best passing items, equal to the same mode
run over a brute-force gallery that holds only the passing items, on a 5k-item index of imported vectors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossgap_index import CrossGapIndex, SearchOptions
from crossgap_index.errors import QueryError
from crossgap_index.search.filters import ItemFilter, brute_force_top_k, filtered_top_k, matches_glob, under_folder
from crossgap_index.search.ranking import Ranked
from crossgap_index.search.run import Queries, run_mode
from tests.support.photos import MODEL

N = 5000
DIM = 64  # tiny-random's embed_dim
K = 10
FOLDERS = ("/photos/2023", "/photos/2023-old", "/photos/2024/raw")


def _path(i: int) -> str:
    return f"{FOLDERS[i % 3]}/img{i}.{'jpg' if i % 2 else 'png'}"


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("filters")
    vectors = np.random.default_rng(7).standard_normal((N, DIM)).astype(np.float32)
    np.save(folder / "emb.npy", vectors)
    with (folder / "meta.jsonl").open("w") as f:
        for i in range(1, N + 1):
            f.write(json.dumps({"path": _path(i)}) + "\n")
    CrossGapIndex.import_embeddings(folder / "emb.npy", folder / "idx", MODEL, meta=folder / "meta.jsonl")
    return folder / "idx"


@pytest.fixture(scope="module")
def cgx(index):
    with CrossGapIndex.open(index, readonly=True) as opened:
        yield opened


class PassingOnly:
    """The oracle's gallery: a plain numpy ranking of only the items ``passes`` admits; everything the peers fit
    (vectors, derived statistics) still comes from the whole stored gallery."""

    def __init__(self, base, passes):
        self._base, self._passes = base, passes
        self.fitted = base.fitted
        self.fits = base.fits

    def top_k(self, collection, queries, k, projection):
        ids, vectors = self._base.vectors(collection)
        if projection is not None:
            vectors = projection.apply(vectors)
        return brute_force_top_k(ids, vectors, queries, k, lambda _row, some: self._passes(some))

    def scores(self, collection, query, ids, projection):
        return self._base.scores(collection, query, ids, projection)

    def vectors(self, collection):
        return self._base.vectors(collection)

    def vector_blocks(self, collection, size=16_384):
        return self._base.vector_blocks(collection, size)

    def count(self, collection):
        return self._base.count(collection)

    def vectors_of(self, collection, ids, projection):
        return self._base.vectors_of(collection, ids, projection)

    def version(self, collection):
        return self._base.version(collection)

    def keep(self, name, make):
        return self._base.keep(name, make)


def oracle(cgx, query: dict, options: SearchOptions) -> list[int]:
    """The mode run over ``PassingOnly``: what a filtered search must return."""
    searcher = cgx._runtime.searcher
    feature, modality, digest = searcher.embed([query])[0]
    mode = searcher.served(options, modality)
    item_filter = options.item_filter()
    own = {query["item"]} if "item" in query and options.exclude_query is not False else set()
    rows = cgx._store.catalog.rows

    def passes(ids: np.ndarray) -> np.ndarray:
        found = rows(ids.tolist())
        return np.array(
            [i not in own and item_filter.admits_row(i, found[i].path, found[i].external_id) for i in ids.tolist()],
            bool,
        )

    gallery = PassingOnly(searcher.gallery, passes)
    batch = Queries(feature[None, :], modality, (digest,))
    result = run_mode(mode, batch, "image", options.k, gallery, searcher.transformer)[0]
    return result.ranked.ids.tolist()


FILTERS = {
    "under": {"under": "/photos/2023"},
    "under-trailing-slash": {"under": "/photos/2024/"},
    "glob-name": {"glob": "*.png"},
    "glob-path": {"glob": "*/raw/*.jpg"},
    "only-ids": {"only_ids": tuple(range(1, N + 1, 17))},
    "few-only-ids": {"only_ids": (5, 77, 400, 401, 2000, 3999, 4999)},  # fewer than k pass
    "exclude-ids": {"exclude_ids": tuple(range(1, N + 1, 2))},
    "combined": {"under": "/photos", "glob": "*.jpg", "exclude_ids": tuple(range(2, 3000, 3))},
    "none": {},
}
MODES = ("intra", "aqe", "dba", "nnn", "qbnorm", "center")


def _query(n: int) -> dict:
    return {"vector": np.random.default_rng(100 + n).standard_normal(DIM).tolist()}


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(FILTERS))
def test_every_mode_and_filter_returns_k_passing_hits_equal_to_the_brute_force_oracle(cgx, mode, name):
    options = SearchOptions(mode=mode, k=K, **FILTERS[name])
    item_filter = options.item_filter()
    passing = sum(item_filter.admits_row(i, _path(i), None) for i in range(1, N + 1))
    for n in range(3):
        query = _query(n)
        hits = cgx.search(**query, options=options)
        assert [h.id for h in hits] == oracle(cgx, query, options)
        assert len(hits) == min(K, passing)
        assert all(item_filter.admits_row(h.id, h.path, h.external_id) for h in hits)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ("intra", "aqe", "qbnorm"))
def test_more_like_this_leaves_the_query_item_out_unless_asked(cgx, mode):
    plain = cgx.search(item=1234, k=K, mode=mode)
    assert 1234 not in [h.id for h in plain] and len(plain) == K
    assert [h.id for h in plain] == oracle(cgx, {"item": 1234}, SearchOptions(mode=mode, k=K))
    kept = cgx.search(item=1234, k=K, mode="intra", exclude_query=False)
    assert kept[0].id == 1234
    under = SearchOptions(mode=mode, k=K, under="/photos/2023-old", glob="*.jpg")
    assert [h.id for h in cgx.search(item=1234, options=under)] == oracle(cgx, {"item": 1234}, under)


def test_a_batch_filters_each_query_by_its_own_item(cgx):
    results = cgx.search_batch([{"item": 10}, {"item": 11}, _query(0)], k=3)
    assert 10 not in [h.id for h in results[0]] and 11 not in [h.id for h in results[1]]
    assert all(len(hits) == 3 for hits in results)
    assert [h.id for h in results[0]] == [h.id for h in cgx.search(item=10, k=3)]


def test_a_filter_no_item_passes_returns_nothing(cgx):
    assert cgx.search(**_query(0), k=K, under="/elsewhere") == []
    assert cgx.search(**_query(0), k=K, only_ids=[N + 10]) == []


def test_a_vector_form_for_another_database_refuses_filters_rather_than_drop_them(cgx):
    with pytest.raises(QueryError, match="apply inside this index"):
        cgx.transform_query(**_query(0), mode="intra", under="/photos")
    assert cgx.transform_query(**_query(0), mode="intra").mode == "intra"


def test_filters_on_parts_the_target_lacks_are_one_line_errors(cgx):
    with pytest.raises(QueryError, match="external ids belong to texts"):
        cgx.search(**_query(0), external_ids=["a"])
    with pytest.raises(QueryError, match="stored texts have no path"):
        cgx.search(**_query(0), target="texts", under="/photos")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"only_ids": "12"}, "only_ids is a list of item ids"),
        ({"exclude_ids": [1.5]}, "holds item ids"),
        ({"only_ids": [True]}, "holds item ids"),
        ({"external_ids": "a1"}, "external_ids is a list of strings"),
        ({"under": ""}, "under must be a non-empty string"),
        ({"glob": 3}, "glob must be a non-empty string"),
        ({"exclude_query": "yes"}, "exclude_query is true, false or unset"),
    ],
)
def test_bad_filter_settings_are_refused(settings, message):
    with pytest.raises(QueryError, match=message):
        SearchOptions(**settings)


def test_options_with_filters_stay_hashable_and_normalised():
    a = SearchOptions(only_ids=[3, 1, 3], exclude_ids={5}, external_ids=["b", "a"])
    assert a.only_ids == (1, 3) and a.exclude_ids == (5,) and a.external_ids == ("a", "b")
    assert hash(a) == hash(SearchOptions(only_ids=(1, 3), exclude_ids=(5,), external_ids=("a", "b")))


def test_path_rules_match_whole_components_and_names():
    assert under_folder("/photos/2023/a.jpg", "/photos/2023") and under_folder("/photos/2023", "/photos/2023/")
    assert not under_folder("/photos/2023-old/a.jpg", "/photos/2023") and not under_folder(None, "/")
    assert under_folder("/x/a.jpg", "/")
    assert matches_glob("/a/b/IMG_1.jpg", "IMG_*.jpg") and not matches_glob("/a/b/IMG_1.JPG", "*.jpg")
    assert matches_glob("/a/raw/x.jpg", "*/raw/*") and not matches_glob("/a/b/x.jpg", "*/raw/*")


def test_over_fetching_grows_until_k_pass_or_the_ranking_runs_out():
    rng = np.random.default_rng(3)
    ids = np.arange(1, 2001, dtype=np.int64)
    vectors = rng.standard_normal((2000, 8)).astype(np.float32)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    asked = []

    def top_k(rows, depth):
        asked.append(depth)
        return brute_force_top_k(ids, vectors, rows, depth, lambda _row, some: np.ones(len(some), bool))

    rare = set(range(1, 2001, 97))  # 21 items pass

    def admit(row, some):
        return np.array([i in rare and i != row + 1 for i in some.tolist()], bool)

    got = filtered_top_k(top_k, queries, 5, admit)
    want = brute_force_top_k(ids, vectors, queries, 5, admit)
    assert all(isinstance(r, Ranked) for r in got)
    assert [r.ids.tolist() for r in got] == [r.ids.tolist() for r in want]
    assert asked[0] == 6 and asked == sorted(asked)  # k + 1 first, then deeper for the rows still short
    everything = filtered_top_k(top_k, queries, 50, admit)  # more than pass: the whole collection, once
    assert [len(r) for r in everything] == [20, 21, 21, 21]  # row 0 also leaves out item 1


def test_external_ids_filter_texts(tmp_path):
    with CrossGapIndex.create(tmp_path / "idx", model=MODEL) as cgx:
        texts = [f"caption number {i}" for i in range(40)]
        cgx.add_texts(texts, ids=[f"doc-{i % 4}" for i in range(40)])
        hits = cgx.search(text="caption number 3", target="texts", k=5, external_ids=["doc-1", "doc-2"])
        assert len(hits) == 5 and {h.external_id for h in hits} <= {"doc-1", "doc-2"}
        every = cgx.search(text="caption number 3", target="texts", k=40)
        wanted = [h.id for h in every if h.external_id in ("doc-1", "doc-2")][:5]
        assert [h.id for h in hits] == wanted
        assert ItemFilter(external_ids=frozenset({"doc-1"})).admits_row(1, None, "doc-1")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ("cross", "fused", "span"))
@pytest.mark.parametrize("name", ("under", "few-only-ids", "combined"))
def test_modes_that_use_the_model_filter_each_leg_before_merging(cgx, mode, name):
    options = SearchOptions(mode=mode, k=K, depth=20, **FILTERS[name])
    query = {**_query(5), "modality": "image"}  # an image-space vector: cross inverts it (OTI), span projects it
    hits = cgx.search_batch([query], options)[0]
    assert [h.id for h in hits] == oracle(cgx, query, options)
    assert len(hits) == min(K, sum(options.item_filter().admits_row(i, _path(i), None) for i in range(1, N + 1)))
