"""The LanceDB and Qdrant adapters on what a caller can get wrong: an empty candidate set gives no hits, and a
NaN query, a query of the wrong width or ``k < 1`` is refused in one line (AdapterQueryError, a ValueError)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
qdrant_client = pytest.importorskip("qdrant_client")

from qdrant_client import models  # noqa: E402

from crossgap_index import CrossGapIndex  # noqa: E402
from crossgap_index.errors import CrossGapError  # noqa: E402
from crossgap_index.integrations.lancedb import CrossGapReranker, export_to_lancedb, search_lancedb  # noqa: E402
from crossgap_index.integrations.qdrant import search_qdrant, upsert_index  # noqa: E402
from crossgap_index.integrations.rescore import AdapterQueryError  # noqa: E402
from tests.support.photos import MODEL, write_photo  # noqa: E402

TEXTS = ["a photo of two red shapes", "a photo of three blue shapes", "a photo of many green shapes"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter-refusals")
    for i in range(6):
        write_photo(root / "photos" / f"p{i}.png", seed=500 + i)
    cgx = CrossGapIndex.create(root / "idx", model=MODEL, device="cpu")
    cgx.index_folders([root / "photos"])
    cgx.add_texts(TEXTS)
    db = lancedb.connect(root / "lance")
    full = export_to_lancedb(cgx, db, "items")
    empty = export_to_lancedb(cgx, db, "no_images")
    empty.delete("modality = 'image'")  # a table whose filter leaves no candidate
    qdrant = qdrant_client.QdrantClient(path=str(root / "qdrant"))
    for name in ("items", "no_images"):
        upsert_index(qdrant, name, cgx)
    only_images = models.Filter(must=[models.FieldCondition(key="modality", match=models.MatchValue(value="image"))])
    qdrant.delete("no_images", points_selector=models.FilterSelector(filter=only_images))
    query = cgx.embed_query(text="two red shapes").feature
    yield SimpleNamespace(cgx=cgx, full=full, empty=empty, qdrant=qdrant, query=query)
    qdrant.close()
    cgx.close()


def search(world, backend: str, table: str, transform, vector, **kwargs):
    if backend == "lancedb":
        return search_lancedb(world.full if table == "items" else world.empty, transform, vector, **kwargs)
    return search_qdrant(world.qdrant, table, transform, vector, **kwargs)


@pytest.mark.parametrize("mode", ["intra", "span"])  # span: the candidates are mapped on the client's side
@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_no_candidates_give_no_hits(world, backend, mode):
    transform = world.cgx.transform_query(text="two red shapes", target="images", mode=mode)
    assert len(search(world, backend, "items", transform, world.query, target="images", k=3)) == 3
    assert search(world, backend, "no_images", transform, world.query, target="images", k=3) == []


def test_the_lancedb_reranker_returns_an_empty_table_for_no_candidates(world):
    transform = world.cgx.transform_query(text="two red shapes", target="images", mode="fused")
    nothing = world.full.to_arrow().slice(0, 0)
    reranked = CrossGapReranker(transform).rerank_vector("two red shapes", nothing)
    assert reranked.num_rows == 0 and "_relevance_score" in reranked.column_names


@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"vector": "nan"}, "NaN"),
        ({"vector": "short"}, "has 3 values, the stored vectors have"),
        ({"vector": "long"}, "values, the stored vectors have"),
        ({"vector": "text"}, "not a list of numbers"),
        ({"k": 0}, "k must be an integer of at least 1"),
        ({"k": -1}, "k must be an integer of at least 1"),
        ({"depth": 0}, "depth must be an integer of at least 1"),
    ],
)
def test_bad_queries_are_refused_in_one_line(world, backend, change, fragment):
    transform = world.cgx.transform_query(text="two red shapes", target="images", mode="intra")
    vector = {
        None: world.query,
        "nan": np.where(np.arange(len(world.query)) == 5, np.nan, world.query),
        "short": world.query[:3],
        "long": np.concatenate([world.query, world.query]),
        "text": ["a", "b"],
    }[change.get("vector")]
    kwargs = {"k": change.get("k", 3), "depth": change.get("depth", 10)}
    with pytest.raises(AdapterQueryError) as refused:
        search(world, backend, "items", transform, vector, target="images", **kwargs)
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, CrossGapError)
    message = str(refused.value)
    assert "\n" not in message and fragment in message, message
