"""LanceDB (embedded, on disk) and Qdrant (local mode) adapters: same hits as CrossGapIndex.search."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")
qdrant_client = pytest.importorskip("qdrant_client")

from crossgap_index import CrossGapIndex  # noqa: E402
from crossgap_index.integrations.lancedb import export_to_lancedb, search_lancedb  # noqa: E402
from crossgap_index.integrations.qdrant import search_qdrant, upsert_index  # noqa: E402
from crossgap_index.inversion import InversionConfig  # noqa: E402
from tests.support.photos import MODEL, write_photo  # noqa: E402

CONFIG = InversionConfig(oti_steps=3, ovi_steps=3)
TEXTS = [f"a photo of {n} {c} shapes" for n in ("two", "three", "many") for c in ("red", "blue", "green")]
K, DEPTH = 5, 100  # DEPTH covers every item: the databases' candidate pools are the whole gallery


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrations")
    for i in range(14):
        write_photo(root / "photos" / f"p{i:02d}.png", seed=300 + i)
    query_image = write_photo(root / "query.png", seed=999)
    cgx = CrossGapIndex.create(root / "idx", model=MODEL, device="cpu")
    cgx.index_folders([root / "photos"])
    cgx.add_texts(TEXTS)
    cgx.invert_gallery(CONFIG)
    table = export_to_lancedb(cgx, lancedb.connect(root / "lance"), "items")
    qdrant = qdrant_client.QdrantClient(path=str(root / "qdrant"))
    assert upsert_index(qdrant, "items", cgx) == 14 + len(TEXTS)
    yield SimpleNamespace(cgx=cgx, table=table, qdrant=qdrant, query_image=query_image)
    qdrant.close()
    cgx.close()


CASES = [
    ("image", "images", "intra", "rrf"),
    ("text", "images", "intra", "rrf"),
    ("image", "images", "cross", "rrf"),
    ("image", "images", "fused", "rrf"),
    ("image", "images", "fused", "score"),
    ("image", "images", "cross-gallery", "rrf"),
    ("image", "images", "iso", "rrf"),  # a gallery map: the stored side is projected too
    ("text", "texts", "cross", "rrf"),
    ("text", "texts", "fused", "score"),
    ("text", "texts", "span", "rrf"),
]


@pytest.mark.parametrize(("kind", "target", "mode", "merge"), CASES)
@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_adapter_hits_equal_index_search(world, kind, target, mode, merge, backend):
    query = {"image": world.query_image} if kind == "image" else {"text": "two red shapes"}
    expected = world.cgx.search(**query, target=target, k=K, mode=mode, merge=merge, depth=DEPTH, inversion=CONFIG)
    transform = world.cgx.transform_query(**query, target=target, mode=mode, merge=merge, depth=DEPTH, inversion=CONFIG)
    assert (transform.gallery_map is not None) == (mode in ("iso", "span"))
    plain = world.cgx.embed_query(**query).feature
    if backend == "lancedb":
        got = search_lancedb(world.table, transform, plain, target=target, k=K, depth=DEPTH)
    else:
        got = search_qdrant(world.qdrant, "items", transform, plain, target=target, k=K, depth=DEPTH)
    assert [h.id for h in got] == [h.id for h in expected]
    assert [h.path for h in got] == [h.path for h in expected] and [h.text for h in got] == [h.text for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=1e-4, atol=1e-5)
    assert [h.ranks for h in got] == [h.ranks for h in expected]


def _hybrid(world, reranker, text: str):
    from crossgap_index.integrations.lancedb import PLAIN_COLUMN

    plain = world.cgx.embed_query(text=text).feature
    return (
        world.table.search(query_type="hybrid", vector_column_name=PLAIN_COLUMN)
        .vector(plain)
        .text(text)
        .where("modality = 'text'", prefilter=True)
        .limit(DEPTH)
        .rerank(reranker)
        .to_arrow()
    )


@pytest.fixture(scope="module")
def fts(world):
    from lancedb.index import FTS

    world.table.create_index("text", config=FTS())
    return world


def test_lancedb_hybrid_search_reranks_the_union_like_index_search(fts):
    from crossgap_index import SearchOptions
    from crossgap_index.integrations.lancedb import CrossGapReranker, hits_of

    options = SearchOptions(target="texts", mode="cross", inversion=CONFIG, depth=DEPTH)
    reranker = CrossGapReranker(index=fts.cgx, options=options)
    results = _hybrid(fts, reranker, "two red shapes")
    expected = fts.cgx.search(text="two red shapes", options=options, k=K)
    got = hits_of(results, reranker.transform_for("two red shapes"), K)
    assert [h.id for h in got] == [h.id for h in expected]
    assert [h.ranks for h in got] == [h.ranks for h in expected]


def test_one_lancedb_reranker_serves_concurrent_queries(fts):
    """Nothing per query lives on the instance: threads sharing one reranker each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    from crossgap_index import SearchOptions
    from crossgap_index.integrations.lancedb import CrossGapReranker

    reranker = CrossGapReranker(index=fts.cgx, options=SearchOptions(target="texts", mode="span", depth=DEPTH))
    queries = [f"{n} {c} shapes" for n in ("two", "many") for c in ("red", "blue", "green")] * 2
    alone = {q: _hybrid(fts, reranker, q).column("id").to_pylist() for q in set(queries)}
    assert len({tuple(v) for v in alone.values()}) > 1  # the queries really differ
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda q: _hybrid(fts, reranker, q).column("id").to_pylist(), queries))
    assert together == [alone[q] for q in queries]
