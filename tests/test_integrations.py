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
from crossgap_index.search.merge import RRF_K  # noqa: E402
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


def provisional_transform(cgx, mode, fusion, image=None, text=None):
    """The lists a mode searches with, from embed_query and invert (stand-in for transform_query)."""
    query = cgx.embed_query(image=image, text=text)
    own = "image" if image is not None else "text"
    if mode == "intra":
        lists = {"intra": (query.feature, own)}
    elif mode == "cross-gallery":
        lists = {"cross-gallery": (query.feature, "image-oti")}
    else:
        inverted = cgx.invert(query, CONFIG)
        lists = {"cross": (inverted, own)}
        if mode == "fused":
            lists = {"intra": (query.feature, own), **lists}
    return SimpleNamespace(lists=lists, fusion=fusion if len(lists) > 1 else None, gallery_map=None), query.feature


CASES = [
    ("image", "images", "intra", "rrf"),
    ("text", "images", "intra", "rrf"),
    ("image", "images", "cross", "rrf"),
    ("image", "images", "fused", "rrf"),
    ("image", "images", "fused", "score"),
    ("image", "images", "cross-gallery", "rrf"),
    ("text", "texts", "cross", "rrf"),
    ("text", "texts", "fused", "score"),
]


@pytest.mark.parametrize(("kind", "target", "mode", "merge"), CASES)
@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_adapter_hits_equal_index_search(world, kind, target, mode, merge, backend):
    query = {"image": world.query_image} if kind == "image" else {"text": "two red shapes"}
    expected = world.cgx.search(**query, target=target, k=K, mode=mode, merge=merge, depth=DEPTH, inversion=CONFIG)
    fusion = ("rrf", RRF_K) if merge == "rrf" else ("score", 0.5)
    transform, plain = provisional_transform(world.cgx, mode, fusion, **query)
    if backend == "lancedb":
        got = search_lancedb(world.table, transform, plain, target=target, k=K, depth=DEPTH)
    else:
        got = search_qdrant(world.qdrant, "items", transform, plain, target=target, k=K, depth=DEPTH)
    assert [h.id for h in got] == [h.id for h in expected]
    assert [h.path for h in got] == [h.path for h in expected] and [h.text for h in got] == [h.text for h in expected]
    np.testing.assert_allclose([h.score for h in got], [h.score for h in expected], rtol=1e-4, atol=1e-5)
    assert [h.ranks for h in got] == [h.ranks for h in expected]


@pytest.mark.parametrize("backend", ["lancedb", "qdrant"])
def test_gallery_map_projects_the_stored_side(world, backend):
    """A transform with a gallery map (span / iso): the databases score normalise(v @ M.T) . q,
    checked against numpy over every stored image."""
    rng = np.random.default_rng(0)
    dim = world.cgx.info().dim
    gallery_map = rng.normal(size=(dim, dim)).astype(np.float32)
    query = world.cgx.embed_query(image=world.query_image).feature
    projected = query @ gallery_map.T
    transform = SimpleNamespace(
        lists={"span": (projected / np.linalg.norm(projected), "image")}, fusion=None, gallery_map=gallery_map
    )
    if backend == "lancedb":
        got = search_lancedb(world.table, transform, query, k=K, depth=DEPTH)
    else:
        got = search_qdrant(world.qdrant, "items", transform, query, k=K, depth=DEPTH)
    store = world.cgx._store
    ids, vectors = store.ids_and_vectors("image")
    mapped = vectors @ gallery_map.T
    scores = (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) @ transform.lists["span"][0]
    best = np.argsort(-scores)[:K]
    assert [h.id for h in got] == ids[best].tolist()
    np.testing.assert_allclose([h.score for h in got], scores[best], rtol=1e-4, atol=1e-5)
