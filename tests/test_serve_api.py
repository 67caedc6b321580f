"""`cgx serve` through real HTTP: a uvicorn server on a free loopback port over a crossgap-small index.
Every endpoint, every refusal, concurrent micro-batched inversion against solo results, the token,
and a graceful SIGTERM of a real `cgx serve` process."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from crossgap_index import CrossGapIndex
from crossgap_index.errors import CrossGapError
from crossgap_index.inversion import InversionConfig
from crossgap_index.server.settings import ServeSettings, check_bind
from tests.support.cli import REPO
from tests.support.serve import N_IMAGES, N_TEXTS, copy_index, running_server

STEPS = 3  # cheap inversion: the tests check plumbing and equality, not quality
LIMITS = ServeSettings(
    max_k=50,
    max_batch_queries=8,
    max_texts=20,
    max_request_bytes=512 * 1024,
    max_upload_bytes=256 * 1024,
    max_megapixels=1.0,
    batch_window_ms=100.0,
    max_batch=16,
)


@pytest.fixture(scope="module")
def built(serve_template, tmp_path_factory):
    return copy_index(serve_template, tmp_path_factory.mktemp("serve"))


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


@pytest.fixture
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def refused(response: httpx.Response, status: int, fragment: str = "") -> str:
    """Assert a clean refusal: the status, a JSON body with a one-line error, no traceback."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    message = response.json()["error"]
    assert "\n" not in message and "Traceback" not in response.text
    assert fragment.lower() in message.lower(), message
    return message


def ids(doc: dict) -> list[int]:
    return [h["id"] for h in doc["hits"]]


def png_bytes(size=(32, 32), colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


# -- reading ---------------------------------------------------------------------------------------
def test_healthz_and_info(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["model"] == "crossgap-small"
    assert info["counts"]["image"] == N_IMAGES and info["counts"]["text"] >= N_TEXTS
    assert {"auto", "intra", "cross", "fused", "span", "warm"} <= set(info["modes"])
    assert info["limits"]["max_k"] == 50 and info["batching"]["max_batch"] == 16


def test_text_search_matches_the_library(client, index):
    doc = client.post("/search", json={"text": "a red circle", "k": 7}).json()
    expected = index.search(text="a red circle", k=7)
    assert ids(doc) == [h.id for h in expected]
    assert doc["mode"] == "intra" and doc["timings"]["total_ms"] > 0
    first = doc["hits"][0]
    assert set(first) == {"id", "score", "modality", "path", "ranks", "scores"}
    assert first["modality"] == "image" and first["ranks"] == {"intra": 1}
    assert first["score"] == pytest.approx(expected[0].score, abs=1e-5)


def test_text_to_texts_and_vector_queries(client, index):
    doc = client.post("/search", json={"text": "a blue star", "target": "texts", "k": 5}).json()
    assert all(h["modality"] == "text" and h["text"] for h in doc["hits"])
    assert ids(doc) == [h.id for h in index.search(text="a blue star", target="texts", k=5)]
    vector = index._runtime.encoder.encode_texts(["a blue star"])[0]
    by_vector = client.post("/search", json={"vector": vector.tolist(), "target": "texts", "k": 5}).json()
    assert ids(by_vector) == ids(doc)


def test_photo_upload_and_base64_find_the_photo(client, index, photos):
    photo = photos[5]
    data = photo.read_bytes()
    uploaded = client.post("/search", files={"image": (photo.name, data, "image/png")}, data={"k": "4"}).json()
    encoded = client.post("/search", json={"image_base64": base64.b64encode(data).decode(), "k": 4}).json()
    expected = [h.id for h in index.search(image=photo, k=4)]
    assert ids(uploaded) == ids(encoded) == expected
    assert uploaded["hits"][0]["path"] == str(photo)


def test_more_like_this_by_item_id(client, index, photos):
    item = index.search(image=photos[9], k=1)[0]
    doc = client.post("/search", json={"item_id": item.id, "k": 5, "exclude_query": False}).json()
    assert doc["hits"][0]["id"] == item.id and doc["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    more = client.post("/search", json={"item_id": item.id, "k": 4}).json()  # more like this: itself left out
    assert [h["id"] for h in more["hits"]] == [h["id"] for h in doc["hits"][1:]]
    text_item = index.search(text="a green square", target="texts", k=1)[0]
    doc = client.post("/search", json={"item_id": text_item.id, "target": "texts", "k": 3, "exclude_query": False})
    assert doc.json()["hits"][0]["id"] == text_item.id
    refused(client.post("/search", json={"item_id": 10**9}), 404, "no item")


def test_items_and_their_files(client, index, photos):
    hit = index.search(image=photos[2], k=1)[0]
    assert client.get(f"/items/{hit.id}").json() == {"id": hit.id, "modality": "image", "path": str(photos[2])}
    image = client.get(f"/items/{hit.id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == photos[2].read_bytes()
    text = index.search(text="a red heart", target="texts", k=1)[0]
    assert client.get(f"/items/{text.id}").json()["text"] == text.text
    refused(client.get(f"/items/{text.id}/image"), 404, "text")
    refused(client.get("/items/999999"), 404, "no item")


@pytest.mark.parametrize(
    "path",
    [
        "/items/..%2F..%2Fetc%2Fpasswd/image",
        "/items/%2Fetc%2Fpasswd",
        "/items/1%2F..%2F2/image",
        "/items/1.5/image",
        "/items/-3/image",
        "/items/0",
        "/items/99999999999999999999999/image",
    ],
)
def test_path_like_ids_are_refused(client, path):
    response = client.get(path)
    assert response.status_code in (404, 422)
    assert response.headers["content-type"].startswith("application/json")
    assert "root:" not in response.text and "Traceback" not in response.text


def test_a_swapped_indexed_file_is_not_served(client, index, photos, tmp_path):
    photo = photos[7]
    item = index.search(image=photo, k=1)[0]
    original = tmp_path / "original.png"
    shutil.move(photo, original)
    try:
        photo.symlink_to("/etc/passwd")  # a symlink swapped in since indexing
        refused(client.get(f"/items/{item.id}/image"), 410, "not readable")
        photo.unlink()
        os.mkfifo(photo)  # would block a plain open(); must not hang
        refused(client.get(f"/items/{item.id}/image"), 410, "regular file")
        same = client.post("/search", json={"item_id": item.id, "k": 1, "exclude_query": False})
        assert ids(same.json()) == [item.id]  # the stored vector
        photo.unlink()
        photo.write_bytes(b"\0" * (LIMITS.max_upload_bytes + 1))
        refused(client.get(f"/items/{item.id}/image"), 410, "limit")
    finally:
        photo.unlink(missing_ok=True)
        shutil.move(original, photo)
    assert client.get(f"/items/{item.id}/image").content == photo.read_bytes()


# -- refusals -------------------------------------------------------------------------------------
def test_bad_json_and_wrong_types(client):
    refused(client.post("/search", content=b'{"text": ', headers={"content-type": "application/json"}), 400, "JSON")
    refused(client.post("/search/batch", content=b"[1,", headers={"content-type": "application/json"}), 400, "JSON")
    refused(client.post("/search", json={"text": "x", "k": "many"}), 422, "k:")
    refused(client.post("/search", json={"text": 5}), 422, "text")
    refused(client.post("/search", json={"vector": ["a", "b"]}), 422, "vector")
    refused(client.post("/search", json={"text": "x", "target": "sounds"}), 422, "target")
    refused(client.post("/search", json={"text": "x", "colour": "red"}), 422, "colour")
    nan = b'{"vector": [NaN' + b", 0.1" * 127 + b"]}"
    refused(client.post("/search", content=nan, headers={"content-type": "application/json"}), 422, "vector")
    refused(client.post("/search", json={"item_id": 2**70}), 422, "item_id")
    refused(client.post("/search", json=["not", "an", "object"]), 422)
    refused(client.post("/search/batch", json={"queries": "x"}), 422, "queries")
    refused(client.post("/texts", json={"texts": [1, 2]}), 422, "texts")


def test_bad_queries(client):
    refused(client.post("/search", json={"text": "x", "mode": "telepathy"}), 400, "unknown mode")
    refused(client.post("/search", json={"k": 3}), 400, "exactly one")
    refused(client.post("/search", json={"text": "x", "item_id": 3}), 400, "exactly one")
    refused(client.post("/search", json={"text": "x", "k": 51}), 400, "limit")
    refused(client.post("/search", json={"text": "x", "k": 0}), 422, "k")
    refused(client.post("/search", json={"text": "x", "mode": "cross", "steps": 10**6}), 400, "steps")
    refused(client.post("/search", json={"vector": [0.1, 0.2]}), 400, "dim")
    refused(client.post("/search", json={"vector": [0.1] * 128, "mode": "cross"}), 400, "name its modality")
    refused(client.post("/search", json={"text": "x", "modality": "text"}), 400, "vector only")
    refused(client.post("/search", json={"image_base64": "%%% not base64"}), 400, "base64")
    refused(client.post("/search", content=b"text=x", headers={"content-type": "text/plain"}), 415)
    refused(client.post("/search", files={"photo": ("a.png", png_bytes())}), 400, "'image'")


def test_non_image_and_oversized_uploads(client):
    refused(client.post("/search", files={"image": ("a.png", b"GIF89a but not really")}), 415, "image")
    refused(client.post("/search", json={"image_base64": base64.b64encode(b"hello").decode()}), 415, "image")
    big = np.random.default_rng(0).integers(0, 256, 600 * 1024, dtype=np.uint8).tobytes()
    refused(client.post("/search", files={"image": ("big.png", big)}), 413, "limit")  # Content-Length
    refused(client.post("/search", json={"image_base64": base64.b64encode(big[:300_000]).decode()}), 413)

    def chunks():  # no Content-Length: counted while streaming
        for _ in range(64):
            yield b"x" * 16384

    refused(client.post("/search", content=chunks(), headers={"content-type": "application/json"}), 413, "limit")
    bomb = png_bytes(size=(2000, 1000))  # 2 MP, over the 1 MP limit, small on the wire
    assert len(bomb) < LIMITS.max_upload_bytes
    refused(client.post("/search", files={"image": ("bomb.png", bomb)}), 415, "megapixel")


def test_batch_api(client, index):
    queries = [{"text": t, "k": 3} for t in ("a red circle", "a blue star", "a green square")]
    doc = client.post("/search/batch", json={"queries": queries}).json()
    assert [ids(r) for r in doc["results"]] == [[h.id for h in index.search(text=q["text"], k=3)] for q in queries]
    refused(client.post("/search/batch", json={"queries": queries * 3}), 413, "limit")
    refused(
        client.post("/search/batch", json={"queries": [*queries, {"text": "x", "mode": "nope"}]}), 400, "queries[3]"
    )
    refused(client.post("/search/batch", json={"queries": []}), 422)


def test_add_texts(client, index):
    new = "an enormous violet pentagon juggling"
    doc = client.post("/texts", json={"texts": [new, new, "a red circle in the middle"], "ids": ["x1", "x1", None]})
    assert doc.status_code == 200 and doc.json()["added"] >= 1 and doc.json()["duplicates"] >= 1
    hit = client.post("/search", json={"text": new, "target": "texts", "k": 1}).json()["hits"][0]
    assert hit["text"] == new and hit["external_id"] == "x1" and hit["score"] == pytest.approx(1.0, abs=1e-4)
    refused(client.post("/texts", json={"texts": ["t"] * 21}), 413, "limit")
    refused(client.post("/texts", json={"texts": ["  "]}), 400, "empty")
    refused(client.post("/texts", json={"texts": ["a", "b"], "ids": ["1"]}), 400, "length")


def test_concurrent_writes_and_reads(client):
    """Texts added while searches run: every request answers, every text lands."""
    texts = [f"a concurrency probe number {i}" for i in range(12)]

    def work(i):
        if i % 3 == 0:
            return client.post("/texts", json={"texts": [texts[i // 3]]}).status_code
        return client.post("/search", json={"text": texts[i % 12], "target": "texts", "k": 2}).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(work, range(36)))
    assert set(statuses) == {200}
    for text in texts:
        hit = client.post("/search", json={"text": text, "target": "texts", "k": 1}).json()["hits"][0]
        assert hit["text"] == text


def test_metrics_are_prometheus_text(client):
    client.post("/search", json={"text": "a red circle"})
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    requests = families["cgx_http_requests"]
    search_ok = [s for s in requests.samples if s.labels.get("route") == "/search" and s.labels["status"] == "200"]
    assert search_ok and search_ok[0].value >= 1
    assert "cgx_http_request_seconds" in families and "cgx_inversion_batch_size" in families


def test_openapi_docs_are_served(client):
    schema = client.get("/openapi.json").json()
    assert {"/search", "/search/batch", "/items/{item_id}", "/texts"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


# -- inversion through the micro-batcher ---------------------------------------------------------
@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_concurrent_cross_queries_equal_sequential_and_are_batched(client, index, photos):
    queries = [
        {
            "image_base64": base64.b64encode(p.read_bytes()).decode(),
            "mode": "cross",
            "k": 5,
            "steps": STEPS,
            "precision": "fp32",  # fp32: batch-independent to rounding (bf16 kernels round per batch size)
            "use_cache": False,
        }
        for p in photos[:12]
    ]
    queries += [
        {"text": t, "target": "texts", "mode": "fused", "k": 5, "steps": STEPS, "precision": "fp32", "use_cache": False}
        for t in ("a red circle", "a blue star", "a small green square", "a pink heart")
    ]
    sequential = [client.post("/search", json=q).json() for q in queries]
    assert all(d["timings"]["inversion_batch_size"] == 1 for d in sequential)
    with ThreadPoolExecutor(len(queries)) as pool:
        concurrent = list(pool.map(lambda q: client.post("/search", json=q).json(), queries))
    assert [ids(d) for d in concurrent] == [ids(d) for d in sequential]
    for a, b in zip(concurrent, sequential, strict=True):
        assert [h["score"] for h in a["hits"]] == pytest.approx([h["score"] for h in b["hits"]], abs=1e-5)
    sizes = [d["timings"]["inversion_batch_size"] for d in concurrent]
    assert max(sizes) > 1, sizes
    # an upload is seeded by its bytes, as the same file given to the library (or `cgx query`) is
    fp32 = InversionConfig(oti_steps=STEPS, precision="fp32")
    solo = index.search(image=photos[0], k=5, mode="cross", inversion=fp32, use_cache=False)
    assert ids(sequential[0]) == [h.id for h in solo]
    metrics = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    count = [s for s in metrics["cgx_inversion_batch_size"].samples if s.name.endswith("_count")][0]
    assert count.value >= len(queries) + 1


def test_a_vector_that_names_its_modality_is_inverted(client, index, photos):
    vector = index.embed_query(image=photos[3]).feature.tolist()
    body = {"vector": vector, "modality": "image", "mode": "cross", "k": 3, "steps": STEPS, "use_cache": False}
    doc = client.post("/search", json=body).json()
    assert len(doc["hits"]) == 3 and doc["timings"]["inversion_batch_size"] == 1


def test_batch_api_inverts_together(client):
    queries = [
        {"text": t, "target": "texts", "mode": "cross", "k": 3, "steps": STEPS, "use_cache": False}
        for t in ("a red circle", "a blue star", "a yellow cross")
    ]
    doc = client.post("/search/batch", json={"queries": queries}).json()
    assert [r["timings"]["inversion_batch_size"] for r in doc["results"]] == [3, 3, 3]
    solo = [client.post("/search", json=q).json() for q in queries]
    assert [ids(r) for r in doc["results"]] == [ids(d) for d in solo]


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_intra_queries_do_not_wait_for_inversions(client):
    slow = {
        "text": "a purple triangle",
        "target": "texts",
        "mode": "cross",
        "steps": 400,
        "precision": "fp32",
        "use_cache": False,
    }
    with ThreadPoolExecutor(1) as pool:
        inverting = pool.submit(client.post, "/search", json=slow)
        while 'cgx_queries_in_flight{path="batched"} 1.0' not in client.get("/metrics").text:
            assert not inverting.done(), inverting.result().text
            time.sleep(0.05)
        for _ in range(3):  # the inversion is running: intra queries go past it
            assert client.post("/search", json={"text": "a red circle", "k": 3}).status_code == 200
        assert not inverting.done(), "the intra queries had to wait for the inversion"
        assert inverting.result(120).status_code == 200


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_slow_queries_time_out(index, photos):
    settings = ServeSettings(request_timeout_s=0.2)
    with running_server(index, settings) as base, httpx.Client(base_url=base, timeout=60) as c:
        slow = {
            "text": "a red circle",
            "target": "texts",
            "mode": "cross",
            "steps": 400,
            "precision": "fp32",
            "use_cache": False,
        }
        refused(c.post("/search", json=slow), 504, "longer")
        assert c.get("/healthz").status_code == 200


# -- the token --------------------------------------------------------------------------------------
def test_token_is_required_except_on_healthz(index):
    with running_server(index, ServeSettings(token="s3cret", max_request_bytes=1024)) as base:
        c = httpx.Client(base_url=base, timeout=30)
        assert c.get("/healthz").status_code == 200
        for response in (c.get("/info"), c.get("/"), c.get("/metrics"), c.post("/search", json={"text": "x"})):
            refused(response, 401, "token")
        refused(c.get("/info", headers={"authorization": "Bearer wrong"}), 401)
        refused(c.post("/search", content=b"x" * 4096, headers={"content-type": "application/json"}), 401)
        ok = {"authorization": "Bearer s3cret"}
        assert c.get("/info", headers=ok).status_code == 200
        assert c.post("/search", json={"text": "a red circle", "k": 2}, headers=ok).status_code == 200
        page = c.get("/?token=s3cret&q=red")  # the page's first visit sets a cookie and drops the token
        assert page.status_code == 303 and page.headers["location"] == "/?q=red"
        assert c.get("/info").status_code == 200  # the cookie now carries it


def test_binding_beyond_loopback_needs_a_token():
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "t")
    with pytest.raises(CrossGapError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(CrossGapError, match="--token"):
        check_bind("192.168.1.20", None)
    env = {k: v for k, v in os.environ.items() if k != "CGX_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "crossgap_index", "serve", "--host", "0.0.0.0", "--index", "/nonexistent"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "--token" in done.stderr and "Traceback" not in done.stderr


# -- a real `cgx serve` process ------------------------------------------------------------------------
def _wait_until_read(server_port: int, client_port: int, timeout: float = 60) -> None:
    """Until the server's end of the connection 127.0.0.1:client_port -> server_port has no unread bytes in its
    kernel receive queue (/proc/net/tcp): the server process has read what the client sent."""
    local, remote = f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}"
    deadline = time.monotonic() + timeout
    while True:
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1] == local and fields[2] == remote and int(fields[4].split(":")[1], 16) == 0:
                return
        assert time.monotonic() < deadline, "the server never read the request"
        time.sleep(0.01)  # polling a condition, bounded by the deadline


@pytest.mark.slow  # over 3 s on a loaded 2-core machine (benchmarks/results/setup.md)
def test_sigterm_finishes_the_request_in_flight(built):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossgap_index", "serve", "--index", str(built[0]), "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        port = None
        before: list[str] = []
        deadline = time.monotonic() + 120
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            before.append(line)
            found = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "cgx serve did not start"
        assert before[0].startswith("cgx serve: opening the index and loading its model")  # no silent loading
        assert any(line.startswith("cgx serve: 48 images, model crossgap-small") for line in before)
        body = b'{"text": "a red circle", "k": 3}'
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(
                f"POST /search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n".encode()
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body[:10]
            )
            # in flight: the server has read the headers and half the body (its receive queue is empty)
            _wait_until_read(port, conn.getsockname()[1])
            proc.send_signal(signal.SIGTERM)
            while "Shutting down" not in (line := proc.stdout.readline()):  # uvicorn has begun to shut down
                assert line, "cgx serve ended without shutting down gracefully"
            conn.sendall(body[10:])
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert b'"hits"' in reply
        # uvicorn finishes, shuts the app down (batcher drained, index closed), then re-raises the signal
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
