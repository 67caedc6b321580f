"""`cgx serve` against a hostile client, through a real uvicorn server over HTTP (raw sockets where a
client library would tidy the request up): images served only while they are the files indexed, metrics
that clients cannot grow, DNS rebinding, strict parsing, counts checked before bodies are validated,
file names that are not UTF-8, the page's token cookie, offline /docs, and micro-batches that answer
exactly as solo queries at the default precision."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crossgap_index import CrossGapIndex
from crossgap_index.server.app import body_limits
from crossgap_index.server.middleware import METRIC_METHODS
from crossgap_index.server.settings import ServeSettings
from tests.support.photos import write_photo
from tests.support.serve import copy_index, running_server

LIMITS = ServeSettings(max_k=50, max_batch_queries=8, max_texts=20, batch_window_ms=100.0, max_batch=16)
TOKEN = "s3cret-token"
ODD_NAME = b"caf\xe9 \xff.png"  # not UTF-8: Linux file names are bytes


@pytest.fixture(scope="module")
def built(serve_template, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    index_path, photos = copy_index(serve_template, root)
    odd = root / "odd"
    odd.mkdir()
    write_photo(Path(os.fsdecode(bytes(odd) + b"/" + ODD_NAME)), seed=4242, size=(64, 64))
    return index_path, photos, odd


@pytest.fixture(scope="module")
def index(built):
    with CrossGapIndex.open(built[0], device="cpu") as cgx:
        yield cgx


@pytest.fixture(scope="module")
def photos(built) -> list[Path]:
    return sorted(built[1].rglob("*.png"))


@pytest.fixture(scope="module")
def url(index):
    with running_server(index, LIMITS) as base:
        yield base


@pytest.fixture(scope="module")
def token_url(index):
    with running_server(index, ServeSettings(token=TOKEN)) as base:
        yield base


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as written on a fresh connection; the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port_of(url)), timeout=60) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    return int(lines[0].split()[1]), headers, body


def refused(response: httpx.Response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in response.text
    assert fragment.lower() in message.lower(), message
    return message


def item_of(index: CrossGapIndex, photo: Path) -> int:
    return next(row.id for row in index.ls("image") if row.path == str(photo))


# -- the image route serves only the file indexed ------------------------------------------
def test_a_folder_swapped_for_a_symlink_is_not_followed(client, index, photos, tmp_path):
    photo = photos[3]
    item = item_of(index, photo)
    folder = photo.parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / photo.name).write_bytes(b"secret bytes from outside the gallery")
    moved = tmp_path / "moved"
    folder.rename(moved)
    try:
        folder.symlink_to(outside, target_is_directory=True)  # the parent, not the file, is the link
        response = client.get(f"/items/{item}/image")
        refused(response, 410, "symbolic link")
        assert b"secret" not in response.content
        folder.unlink()
        folder.symlink_to(moved, target_is_directory=True)  # even a link back to the real folder
        refused(client.get(f"/items/{item}/image"), 410, "symbolic link")
    finally:
        if folder.is_symlink():
            folder.unlink()
        moved.rename(folder)
    assert client.get(f"/items/{item}/image").content == photo.read_bytes()


def test_a_file_with_other_content_is_not_served(client, index, photos, tmp_path):
    photo = photos[4]
    item = item_of(index, photo)
    original = photo.read_bytes()
    stat = photo.stat()
    try:
        same_size = bytes(reversed(original))
        photo.write_bytes(same_size)
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size and mtime: only the hash tells
        refused(client.get(f"/items/{item}/image"), 410, "content differs")
        photo.write_bytes(original + b"\0")
        refused(client.get(f"/items/{item}/image"), 410, "size differs")
        photo.write_bytes(original)  # the indexed bytes again (a new mtime): served
        assert client.get(f"/items/{item}/image").content == original
    finally:
        photo.write_bytes(original)
        os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# -- metrics carry no client-chosen label values ------------------------------------------
def _labels(metrics_text: str) -> tuple[set[str], set[str]]:
    families = {f.name: f for f in text_string_to_metric_families(metrics_text)}
    samples = families["cgx_http_requests"].samples
    return {s.labels["method"] for s in samples}, {s.labels["route"] for s in samples}


def _known_routes(client: httpx.Client) -> set[str]:
    return set(client.get("/openapi.json").json()["paths"]) | {"/", "/docs", "/healthz", "/metrics", "/openapi.json"}


@pytest.mark.parametrize("method", [b"X" * 60000, b"BREW", b"get", b"PROPFIND"])
def test_unknown_methods_and_paths_become_other(client, url, method):
    before = len(client.get("/metrics").content)
    host = f"127.0.0.1:{port_of(url)}".encode()
    for path in (b"/search", b"/no/such/route/" + method[:40], b"/items/1"):
        status, _, _ = raw(url, method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        assert status in (400, 404, 405, 415)
    text = client.get("/metrics").text
    methods, routes = _labels(text)
    assert methods <= METRIC_METHODS | {"other"}, methods
    assert routes <= _known_routes(client) | {"other"}, routes
    assert len(text) < before + 4096  # a handful of new series at most, never the client's strings
    assert method.decode() not in methods


def test_refused_requests_are_counted_without_the_clients_strings(token_url):
    host = f"127.0.0.1:{port_of(token_url)}".encode()
    for method in (b"ATTACKER-CHOSEN", b"GET"):
        request = method + b" /attacker/chosen/path HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        assert raw(token_url, request)[0] in (400, 401)
    with httpx.Client(base_url=token_url, headers={"authorization": f"Bearer {TOKEN}"}) as c:
        text = c.get("/metrics").text
    assert "ATTACKER" not in text and "attacker" not in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    refusals = [s for s in families["cgx_http_requests"].samples if s.labels.get("status") == "401"]
    assert refusals and {s.labels["route"] for s in refusals} == {"other"}


# -- DNS rebinding and content types ---------------------------------------------------------
@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"127.0.0.1:{port}", 200),
        (b"localhost:{port}", 200),
        (b"LOCALHOST", 200),
        (b"[::1]:{port}", 200),
        (b"rebound.example.com:{port}", 421),
        (b"127.0.0.1.nip.io:{port}", 421),
        (b"localhost.attacker.net", 421),
        (b"10.0.0.5:{port}", 421),
        (b"127.0.0.1:{port}:1", 400),
        (b"[::1]junk", 400),
    ],
)
def test_without_a_token_only_local_host_names_are_answered(url, host, status):
    host = host.replace(b"{port}", str(port_of(url)).encode())
    got, _, body = raw(url, b"GET /info HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert got == status, body
    if status != 200:
        assert b"models" not in body and b"counts" not in body


def test_a_missing_host_is_refused_without_a_token(url):
    got, _, body = raw(url, b"GET /info HTTP/1.0\r\n\r\n")
    assert got == 400 and b"Host" in body


def test_with_a_token_any_host_is_served(token_url):
    conn = http.client.HTTPConnection("127.0.0.1", port_of(token_url), timeout=30)
    conn.putrequest("GET", "/info", skip_host=True)
    conn.putheader("Host", "my-server.example.org")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.endheaders()
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/search", None),
        ("/search", "text/plain"),
        ("/search/batch", "application/x-www-form-urlencoded"),
        ("/texts", None),
        ("/texts", "text/plain;charset=utf-8"),
    ],
)
def test_writes_need_a_json_or_multipart_body(client, path, content_type):
    body = json.dumps({"texts": ["a probe that must not be stored"], "queries": [{"text": "x"}], "text": "x"})
    headers = {"content-type": content_type} if content_type else {}
    request = client.build_request("POST", path, content=body.encode(), headers=headers)
    assert content_type is not None or "content-type" not in request.headers
    refused(client.send(request), 415, "application/json")
    hits = client.post("/search", json={"text": "a probe that must not be stored", "target": "texts", "k": 1})
    assert hits.json()["hits"][0]["text"] != "a probe that must not be stored"


# -- file names that are not UTF-8 ------------------------------------------------------------
def test_a_file_name_that_is_not_utf8_is_answered(client, index, built):
    index.index_folders([built[2]])  # the server's own index object: searched at once
    try:
        _answered(client, bytes(built[2]) + b"/" + ODD_NAME)
    finally:
        index.remove(paths=[built[2]])


def _answered(client: httpx.Client, odd_path: bytes) -> None:
    data = Path(os.fsdecode(odd_path)).read_bytes()
    response = client.post("/search", json={"image_base64": base64.b64encode(data).decode(), "k": 3})
    assert response.status_code == 200, response.text
    response.content.decode("utf-8")  # valid UTF-8 (in fact ASCII) JSON
    hit = response.json()["hits"][0]
    assert os.fsencode(hit["path"]) == odd_path  # lossless: the exact bytes of the name
    item = client.get(f"/items/{hit['id']}")
    assert item.status_code == 200 and os.fsencode(item.json()["path"]) == odd_path
    image = client.get(f"/items/{hit['id']}/image")
    assert image.status_code == 200 and image.content == data
    assert client.post("/search/batch", json={"queries": [{"item_id": hit["id"], "k": 2}]}).status_code == 200


# -- counts before validation, per-route body caps ---------------------------------------------
def test_the_query_count_is_checked_before_any_query_is_validated(client):
    too_many = [{"text": "x"}] * (LIMITS.max_batch_queries + 1)
    refused(client.post("/search/batch", json={"queries": too_many}), 413, "queries")
    # past the limit the body is never read further: an invalid 10th query, or broken JSON, is not reached
    body = json.dumps({"queries": too_many + [{"k": "not an int"}]})
    headers = {"content-type": "application/json"}
    refused(client.post("/search/batch", content=body, headers=headers), 413, "limit")
    refused(client.post("/search/batch", content=body[:-2] + ",,,]}", headers=headers), 413, "limit")
    many = b'{"queries": [' + b",".join([b'{"text":"x"}'] * 200_000) + b"]}"  # 2.6 MB, 200,000 queries
    refused(client.post("/search/batch", content=many, headers=headers), 413, "queries")
    texts = b'{"ids": [' + b",".join([b"null"] * 100_000) + b'], "texts": ["a"]}'
    refused(client.post("/texts", content=texts, headers=headers), 413, "ids")
    assert client.get("/healthz").status_code == 200


def test_each_route_has_its_own_body_cap(url):
    caps = body_limits(LIMITS)
    assert caps["/search"] < caps["/search/batch"] == LIMITS.max_request_bytes
    host = f"127.0.0.1:{port_of(url)}".encode()
    declared = str(caps["/search"] + 1).encode()  # under the server's cap, over the route's
    head = b"POST /search HTTP/1.1\r\nHost: " + host + b"\r\nContent-Type: application/json\r\n"
    status, _, body = raw(url, head + b"Content-Length: " + declared + b"\r\nConnection: close\r\n\r\n")
    assert status == 413 and str(caps["/search"]).encode() in body


def test_deep_nesting_is_a_clean_400(client):
    deep = b'{"queries": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    response = client.post("/search/batch", content=deep, headers={"content-type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert "Traceback" not in response.text


# -- messages that blame the right field, strict types --------------------------------------
def test_a_bad_surrogate_in_an_id_names_the_id(client):
    body = b'{"texts": ["a fine text"], "ids": ["\\ud800"]}'
    message = refused(client.post("/texts", content=body, headers={"content-type": "application/json"}), 400, "ids[0]")
    assert "text" not in message.split("]", 1)[0].replace("ids", "")
    body = b'{"texts": ["bad \\udfff text"], "ids": ["fine"]}'
    refused(client.post("/texts", content=body, headers={"content-type": "application/json"}), 400, "texts[0]")


@pytest.mark.parametrize(
    "query",
    [
        {"text": "x", "k": True},
        {"text": "x", "k": 5.0},
        {"text": "x", "k": "5"},
        {"item_id": "1"},
        {"item_id": True},
        {"text": "x", "use_cache": 1},
        {"text": "x", "alpha": "0.5"},
    ],
)
def test_json_types_are_strict(client, query):
    refused(client.post("/search", json=query), 422)
    refused(client.post("/search/batch", json={"queries": [query]}), 422, "queries.0")


@pytest.mark.parametrize("item", ["+1", "%201", "1.0", "01", "1e0", "0x1", "%2B1"])
def test_item_ids_are_digits_only(client, item):
    refused(client.get(f"/items/{item}"), 422, "item_id")
    refused(client.get(f"/items/{item}/image"), 422, "item_id")


def test_form_fields_are_strict_and_an_empty_upload_says_so(client, photos):
    data = photos[0].read_bytes()
    assert client.post("/search", files={"image": ("a.png", data)}, data={"k": "4"}).json()["hits"]
    for bad in ("+4", " 4", "4.0", "true", "NaN"):
        refused(client.post("/search", files={"image": ("a.png", data)}, data={"k": bad}), 422, "k")
    ok = client.post("/search", files={"image": ("a.png", data)}, data={"k": "2", "use_cache": "false"})
    assert len(ok.json()["hits"]) == 2
    refused(client.post("/search", files={"image": ("a.png", b"")}), 400, "empty")


# -- the page's token cookie ----------------------------------------------------------------
def test_a_wrong_token_in_the_address_does_not_replace_the_cookie(token_url):
    with httpx.Client(base_url=token_url, timeout=30) as c:
        first = c.get(f"/?token={TOKEN}")
        assert first.status_code == 303 and c.cookies.get("cgx_token") == TOKEN
        wrong = c.get("/?token=ANY")
        assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
        assert c.cookies.get("cgx_token") == TOKEN
        assert c.get("/info").status_code == 200  # the cookie still carries the right token
        assert c.get("/?token=").status_code == 401
        assert c.get(f"/?token={TOKEN}&token=ANY").status_code == 401
        assert c.get("/?token=%E2%82%AC%FF").status_code == 401


# -- /docs offline ------------------------------------------------------------------------------
def test_docs_load_nothing_from_elsewhere(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/docs/assets/{asset}" in page.text
        response = client.get(f"/docs/assets/{asset}")
        assert response.status_code == 200 and len(response.content) > 10_000
    assert "http://" not in page.text.replace("http://127.0.0.1", "") and "https://" not in page.text
    assert client.get("/redoc").status_code == 404  # a CDN page: not served
    schema = client.get("/openapi.json").json()
    assert schema["components"]["schemas"]["BatchSearchRequest"]["properties"]["queries"]
    assert "requestBody" in schema["paths"]["/search/batch"]["post"]
    assert "requestBody" in schema["paths"]["/texts"]["post"]


# -- micro-batches equal solo queries, at the default precision and in bf16 ----------------------
@pytest.mark.slow
@pytest.mark.parametrize("precision", [None, "bf16"])  # None: auto (a small model inverts in fp32 on a CPU)
def test_micro_batches_equal_solo(client, index, photos, precision):
    extra = {"precision": precision} if precision else {}
    queries = [
        {"image_base64": base64.b64encode(p.read_bytes()).decode(), "mode": "cross", "k": 5, "steps": 4, **extra}
        for p in photos[10:22]
    ]
    queries += [
        {"text": t, "target": "texts", "mode": "cross", "k": 5, "steps": 4, **extra}
        for t in ("a red circle", "a blue star", "a small green square")
    ]
    solo = [client.post("/search", json={**q, "use_cache": False}).json() for q in queries]
    assert all(d["timings"]["inversion_batch_size"] == 1 for d in solo)
    with ThreadPoolExecutor(len(queries)) as pool:  # cache on: the batch fills cache.sqlite first
        batched = list(pool.map(lambda q: client.post("/search", json=q).json(), queries))
    assert max(d["timings"]["inversion_batch_size"] for d in batched) > 1
    for a, b in zip(batched, solo, strict=True):
        assert [h["id"] for h in a["hits"]] == [h["id"] for h in b["hits"]]
        assert [h["score"] for h in a["hits"]] == pytest.approx([h["score"] for h in b["hits"]], abs=1e-6)
    cached = [client.post("/search", json=q).json() for q in queries]  # answers from the cache the batch wrote
    assert [[h["id"] for h in d["hits"]] for d in cached] == [[h["id"] for h in d["hits"]] for d in solo]
    assert all(d["timings"]["inversion_batch_size"] == 0 for d in cached)
