"""Filters, query arithmetic and near-duplicates over real HTTP (a uvicorn server over a crossgap-small index):
the same hits as the library with the same options, and one-line refusals."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import httpx
import pytest

from crossgap_index import CrossGapIndex, SearchOptions
from crossgap_index.server.settings import ServeSettings
from tests.support.serve import copy_index, running_server


@pytest.fixture(scope="module")
def built(serve_template, tmp_path_factory):
    return copy_index(serve_template, tmp_path_factory.mktemp("serve-filters"))


@pytest.fixture(scope="module")
def index(built):
    with CrossGapIndex.open(built[0], device="cpu") as cgx:
        yield cgx


@pytest.fixture(scope="module")
def client(index):
    with running_server(index, ServeSettings()) as base, httpx.Client(base_url=base, timeout=120) as c:
        yield c


def ids(hits) -> list[int]:
    return [h["id"] if isinstance(h, dict) else h.id for h in hits]


def test_filters_answer_as_the_library_does(client, index, built):
    folder = sorted(p for p in built[1].iterdir() if p.is_dir())[0]
    body = {"text": "a red circle", "k": 5, "under": str(folder)}
    hits = client.post("/search", json=body).json()["hits"]
    assert hits and all(h["path"].startswith(str(folder) + "/") for h in hits)
    assert ids(hits) == ids(index.search(text="a red circle", k=5, under=str(folder)))
    only = client.post("/search", json={"text": "a shape", "only_ids": [3, 5, 7], "exclude_ids": [5]}).json()
    assert sorted(ids(only["hits"])) == [3, 7]
    globbed = client.post("/search", json={"text": "a shape", "glob": "*_1?.png", "k": 50}).json()["hits"]
    assert globbed and all(fnmatch.fnmatchcase(Path(h["path"]).name, "*_1?.png") for h in globbed)
    assert len(globbed) < 48


def test_more_like_this_leaves_the_item_out_unless_asked(client, index):
    plain = client.post("/search", json={"item_id": 4, "k": 5}).json()["hits"]
    assert 4 not in ids(plain) and len(plain) == 5
    assert ids(plain) == ids(index.search(item=4, k=5))
    kept = client.post("/search", json={"item_id": 4, "k": 5, "exclude_query": False}).json()["hits"]
    assert kept[0]["id"] == 4


def test_a_filtered_fused_query(client, index):
    options = SearchOptions(target="images", k=4, mode="fused", only_ids=tuple(range(10, 30)))
    body = {"text": "a blue square", "k": 4, "mode": "fused", "only_ids": list(range(10, 30))}
    hits = client.post("/search", json=body).json()["hits"]
    assert len(hits) == 4 and all(10 <= h["id"] < 30 for h in hits)
    served = index.search(text="a blue square", options=options)
    assert ids(hits) == ids(served)  # a text query on images is already inter-modal: served as it is


def test_an_expression_is_searched_as_the_library_searches_it(client, index):
    body = {"expression": '2:"a red circle" - a blue square + item:3', "k": 5}
    hits = client.post("/search", json=body).json()["hits"]
    assert ids(hits) == ids(index.search(expression='2:"a red circle" - "a blue square" + item:3', k=5))
    assert 3 not in ids(hits)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"expression": "cat +"}, 400, "a term is missing"),
        ({"expression": "cat", "text": "dog"}, 400, "give exactly one query"),
        ({"text": "cat", "only_ids": "3"}, 422, "only_ids"),
        ({"text": "cat", "target": "texts", "under": "/x"}, 400, "stored texts have no path"),
        ({"text": "cat", "external_ids": ["a"]}, 400, "external ids belong to texts"),
    ],
)
def test_bad_filters_and_expressions_are_refused_in_one_line(client, body, status, message):
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_a_multipart_upload_takes_filters_as_form_fields(client, built):
    photo = sorted(built[1].rglob("*.png"))[0]
    files = {"image": (photo.name, photo.read_bytes(), "image/png")}
    response = client.post("/search", files=files, data={"only_ids": "[1, 2, 3]", "k": "2"})
    assert response.status_code == 200, response.text
    assert set(ids(response.json()["hits"])) <= {1, 2, 3} and len(response.json()["hits"]) == 2


def test_duplicates_endpoint(client, index):
    response = client.get("/duplicates", params={"threshold": 0.99})
    assert response.status_code == 200, response.text
    groups = response.json()["groups"]
    assert groups == [[{"id": r.id, "path": r.path} for r in group] for group in index.duplicates(0.99)]
    assert client.get("/duplicates", params={"threshold": 2}).status_code == 422
