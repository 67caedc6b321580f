"""clip-retrieval's back-end protocol on `cgx serve`, spoken by the real clip-retrieval package's ClipClient
against a real uvicorn server: the same ids in the same order as POST /search."""

from __future__ import annotations

import base64
import importlib.util
import json
from pathlib import Path

import httpx
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.server.settings import ServeSettings
from tests.support.serve import N_IMAGES, copy_index, running_server


def load_clip_client():
    """clip_retrieval/clip_client.py from the installed package, run on its own: the package's __init__
    imports its whole back-end (flask, torch models), which dev-setup.sh leaves out (--no-deps)."""
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("needs clip-retrieval: pip install --no-deps clip-retrieval (dev-setup.sh does)")
    path = Path(next(iter(spec.submodule_search_locations))) / "clip_client.py"
    module_spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


clip = load_clip_client()


@pytest.fixture(scope="module")
def served(serve_template, tmp_path_factory):
    index_path, photos = copy_index(serve_template, tmp_path_factory.mktemp("clip"))
    with CrossGapIndex.open(index_path, device="cpu") as cgx, running_server(cgx, ServeSettings(max_k=50)) as url:
        yield url, cgx, sorted(photos.rglob("*.png"))


@pytest.fixture
def http(served):
    with httpx.Client(base_url=served[0], timeout=60) as c:
        yield c


def client(url: str, modality: str = "image", num_images: int = 10):
    return clip.ClipClient(
        url=f"{url}/knn-service",
        indice_name="index",  # the index folder's name (GET /indices-list)
        modality=clip.Modality(modality),
        num_images=num_images,
    )


def search_ids(http: httpx.Client, **query) -> tuple[list[int], list[float]]:
    hits = http.post("/search", json=query).json()["hits"]
    return [h["id"] for h in hits], [h["score"] for h in hits]


def test_text_query_for_images_equals_search(served, http):
    url, _, photos = served
    results = client(url, num_images=12).query(text="a red circle")
    assert isinstance(results, list), results
    ids, scores = search_ids(http, text="a red circle", k=12, target="images")
    assert [r["id"] for r in results] == ids and len(ids) == 12
    assert [r["similarity"] for r in results] == pytest.approx(scores, abs=1e-6)
    first = results[0]
    assert set(first) == {"id", "similarity", "caption", "image_path", "url"}
    assert first["caption"] == Path(first["image_path"]).name and first["image_path"].endswith(".png")
    image = http.get(first["url"])  # the original, served by id
    assert image.status_code == 200 and image.content == Path(first["image_path"]).read_bytes()


def test_image_query_finds_the_photo_first_and_equals_search(served, http):
    url, _, photos = served
    photo = photos[7]
    results = client(url, num_images=8).query(image=str(photo))
    encoded = base64.b64encode(photo.read_bytes()).decode()
    ids, _ = search_ids(http, image_base64=encoded, k=8)
    assert [r["id"] for r in results] == ids
    assert results[0]["image_path"] == str(photo) and results[0]["similarity"] == pytest.approx(1.0, abs=1e-3)


def test_embedding_query_equals_a_vector_search(served, http):
    url, cgx, photos = served
    vector = cgx.embed_query(image=photos[3]).feature.tolist()
    results = client(url, num_images=N_IMAGES).query(embedding_input=vector)
    ids, _ = search_ids(http, vector=vector, k=N_IMAGES)
    assert [r["id"] for r in results] == ids and len(ids) == N_IMAGES
    assert results[0]["image_path"] == str(photos[3])


def test_text_modality_searches_the_texts(served, http):
    url, _, _ = served
    results = client(url, modality="text", num_images=5).query(text="a blue star")
    ids, _ = search_ids(http, text="a blue star", k=5, target="texts")
    assert [r["id"] for r in results] == ids
    hits = http.post("/search", json={"text": "a blue star", "k": 5, "target": "texts"}).json()["hits"]
    texts = {h["id"]: h["text"] for h in hits}
    assert all(set(r) == {"id", "similarity", "caption"} and r["caption"] == texts[r["id"]] for r in results)


def test_mode_is_an_extra_field(served, http):
    url, _, photos = served
    encoded = base64.b64encode(photos[2].read_bytes()).decode()
    body = {"image": encoded, "modality": "image", "num_images": 9, "indice_name": "index", "mode": "fused"}
    results = httpx.post(f"{url}/knn-service", content=json.dumps(body), timeout=60).json()  # no Content-Type
    ids, _ = search_ids(http, image_base64=encoded, k=9, mode="fused")
    assert [r["id"] for r in results] == ids
    assert ids != search_ids(http, image_base64=encoded, k=9)[0]  # the mode changed the answer


def test_indices_list_and_metadata(served, http):
    url, _, _ = served
    assert http.get("/indices-list").json() == ["index"]
    results = client(url, num_images=3).query(text="a green square")
    asked = [r["id"] for r in results] + [10**9]
    metas = httpx.post(f"{url}/metadata", content=json.dumps({"ids": asked, "indice_name": "index"})).json()
    assert [m["id"] for m in metas] == asked
    for result, meta in zip(results, metas[:-1], strict=True):
        assert meta["metadata"] == {k: v for k, v in result.items() if k not in ("id", "similarity")}
    assert metas[-1]["metadata"] == {}  # an id no longer (or never) stored


def test_refusals_are_one_line(served, http):
    url, _, photos = served
    # ClipClient sends an http(s) "image" as image_url: never fetched
    answer = client(url).query(image="http://127.0.0.1:9/cat.jpg")
    assert "never fetches" in answer["error"]

    def refused(body: dict, status: int, fragment: str) -> None:
        response = http.post("/knn-service", json=body)
        assert response.status_code == status, response.text
        assert fragment in response.json()["error"] and "\n" not in response.json()["error"]

    refused({"text": "a red circle", "indice_name": "laion5B"}, 404, "GET /indices-list")
    refused({"text": "a red circle", "embedding_input": [0.1] * 4}, 400, "exactly one of")
    refused({"modality": "image"}, 400, "got none")
    refused({"text": "a red circle", "num_images": 51}, 400, "limit of 50")
    refused({"text": "a red circle", "mode": "bogus"}, 400, "unknown mode 'bogus'")
    named = http.post("/knn-service", json={"text": "a red circle", "mode": "bogus"}).json()["error"]
    assert "span, iso" in named and "+aqe" not in named and "GET /info" in named  # the named modes, not all 42
    refused({"text": "a red circle", "modality": "video"}, 422, "modality")
    refused({"image": "not base64!"}, 400, "base64")
    typed = httpx.post(f"{url}/knn-service", content=b'{"text": "x"}', headers={"content-type": "text/plain"})
    assert typed.status_code == 415  # a declared non-JSON type is still refused (only a missing one is taken)


def test_errors_name_the_index_not_its_server_path(served, http):
    """An index with no texts: the refusal names the index by its folder, not where it lies on the server."""
    _, cgx, _ = served
    removed = cgx.ls("text")
    if removed:
        cgx.remove([row.id for row in removed])
    try:
        response = http.post("/search", json={"text": "a red circle", "target": "texts"})
        assert response.status_code == 409
        message = response.json()["error"]
        assert "'index'" in message and str(cgx.path) not in message, message
    finally:
        if removed:
            cgx.add_texts([row.text for row in removed])
