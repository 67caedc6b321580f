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
from tests.conftest import MODEL, write_photo  # noqa: E402

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
