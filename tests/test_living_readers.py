"""One committed state per reader, and readers that never break while other processes write.

A library handle reads the state it opened (or last refreshed to) in every mode, even after another process
removed, re-added and compacted: no exception, ``k`` live hits, never a removed item. ``refresh()`` moves every
collection at once. A running ``cgx serve`` follows other writers by itself: an image another process adds is
the top hit of its own upload in every served mode within seconds, and under a writer looping remove / re-add /
compact, 8 library threads and a server answer every query with ``k`` live hits.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.inversion import InversionConfig
from crossgap_index.server.settings import ServeSettings
from tests.support.cli import REPO, cgx
from tests.support.living_writer import removals, removed_before, wait_until_ready
from tests.support.serve import SERVE_MODEL, copy_index, running_server

K = 8
FEW = InversionConfig(oti_steps=4, ovi_steps=4)
# every mode a plain index serves without a trained network or stored gallery inversions
MODES = ("intra", "cross", "fused", "span", "auto", "aqe", "qbnorm", "nnn", "dba", "center", "span+aqe")


def catalog_ids(index: Path) -> set[int]:
    """The ids the index directory holds now (a fresh handle: the catalog's newest committed rows)."""
    with CrossGapIndex.open(index, device="cpu", readonly=True) as fresh:
        return {row.id for row in fresh.ls()}


def cgx_ok(*args: object) -> subprocess.CompletedProcess:
    return cgx(*args, timeout=300, check=True)


@pytest.fixture(scope="module")
def templates(serve_template, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """The serve index (auto: Flat at this size) and the same photos built as HNSW32."""
    root = tmp_path_factory.mktemp("living")
    flat = copy_index(serve_template, root / "flat")
    photos = serve_template[1]
    hnsw = root / "hnsw" / "index"
    with CrossGapIndex.create(hnsw, model=SERVE_MODEL, device="cpu", factory="HNSW32") as built:
        built.index_folders([photos])
    return {"Flat": flat, "HNSW32": (hnsw, photos)}


@pytest.fixture(scope="module", params=["Flat", "HNSW32"])
def stale(request, templates, tmp_path_factory):
    """A handle opened (and used in every mode) before another process removed each mode's best hits, added
    their files back and compacted; it has not refreshed. Yields (handle, index dir, removed ids, query photo, the
    ids it listed before the write)."""
    template, photos = templates[request.param]
    index = Path(shutil.copytree(template, tmp_path_factory.mktemp(f"stale-{request.param}") / "index"))
    query = sorted(photos.rglob("*.png"))[5]
    with CrossGapIndex.open(index, device="cpu") as reader:
        before = {mode: reader.search(image=query, mode=mode, k=K, inversion=FEW) for mode in MODES}
        removed = sorted({h.id for hits in before.values() for h in hits[:3]})
        listed = {row.id for row in reader.ls()}
        cgx_ok("remove", *[a for i in removed for a in ("--id", i)], "--index", index)
        cgx_ok("build-index", photos, "--index", index, "--device", "cpu")  # the removed files again, under new ids
        cgx_ok("compact", "--min-dead", "0", "--index", index)
        yield reader, index, set(removed), query, listed


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_a_handle_that_has_not_refreshed_answers_every_mode_with_k_live_hits(stale, mode):
    reader, index, removed, query, _ = stale
    hits = reader.search(image=query, mode=mode, k=K, inversion=FEW)
    ids = [h.id for h in hits]
    assert len(hits) == K and len(set(ids)) == K, ids
    assert not set(ids) & removed
    assert set(ids) <= catalog_ids(index)  # only items that are still there
    if reader.info().counts["text"]:  # a text query against images (qbnorm's bank: the index's texts)
        text_hits = reader.search(text="a red circle", mode=mode, k=K, inversion=FEW)
        assert len(text_hits) == K and not {h.id for h in text_hits} & removed


@pytest.mark.slow
def test_refresh_moves_every_collection_and_listing_at_once(stale):
    reader, index, removed, query, listed = stale
    # ls: the held state's items that still have a row (re-added files under new ids join at the swap)
    assert {row.id for row in reader.ls()} == listed - removed
    assert sum(reader.info().counts[m] for m in ("image", "text")) == len(listed)  # what its FAISS files hold
    assert reader.refresh()
    now = catalog_ids(index)
    assert {row.id for row in reader.ls()} == now
    assert sum(reader.info().counts[m] for m in ("image", "text")) == len(now)
    added = max(now)  # a re-added file under its new id
    for mode in MODES:
        hits = reader.search(image=query, mode=mode, k=K, inversion=FEW)
        ids = [h.id for h in hits]
        assert len(hits) == K and not set(ids) & removed and set(ids) <= now, (mode, ids)
    assert reader.search(item=added, mode="intra", k=1, exclude_query=False)[0].id == added  # its own vector
    assert not reader.refresh()  # nothing newer: a cheap no-op


def _upload(client: httpx.Client, data: bytes, mode: str) -> httpx.Response:
    form = {"k": str(K), "mode": mode, "steps": "4"}
    return client.post("/search", files={"image": ("q.png", data, "image/png")}, data=form)


SERVED = ("intra", "cross", "fused", "span", "aqe", "auto", "dba", "nnn", "qbnorm")


@pytest.mark.slow
def test_a_running_server_returns_an_image_another_process_added_in_every_mode(templates, tmp_path):
    index = Path(shutil.copytree(templates["Flat"][0], tmp_path / "index"))
    new = export_folder(tmp_path / "new", seed=97, n=1)
    photo = next(new.rglob("*.png"))
    data = photo.read_bytes()
    with (
        CrossGapIndex.open(index, device="cpu") as served,
        running_server(served, ServeSettings()) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        for mode in SERVED:  # every mode's state and derived collections loaded before the write
            assert _upload(client, data, mode).status_code == 200
        cgx_ok("build-index", new, "--index", index, "--device", "cpu")
        written = time.monotonic()
        with CrossGapIndex.open(index, device="cpu", readonly=True) as fresh:
            added = next(row.id for row in fresh.ls("image") if row.path == str(photo.resolve()))
        for mode in SERVED:
            while True:  # polled with a bound: the follower swaps within about one interval
                response = _upload(client, data, mode)
                assert response.status_code == 200, response.text
                if response.json()["hits"][0]["id"] == added:
                    break
                assert time.monotonic() - written < 5.0, f"{mode}: not served 5 s after the write"
        info = client.get("/info").json()
        assert info["counts"]["image"] == len(list(templates["Flat"][1].rglob("*.png"))) + 1
        page = client.get("/browse", params={"after": added - 1, "limit": 5}).json()
        assert [item["id"] for item in page["items"]] == [added]


# -- many readers against a writer looping remove / re-add / compact --------------------------------------------
CYCLES = 6
THREAD_MODES = ("intra", "aqe", "qbnorm", "span", "dba", "nnn", "cross", "fused")


@pytest.mark.slow
def test_eight_threads_and_a_server_never_fail_while_another_process_writes(templates, tmp_path):
    index = Path(shutil.copytree(templates["HNSW32"][0], tmp_path / "index"))
    log = tmp_path / "writer.log"
    with CrossGapIndex.open(index, device="cpu", readonly=True) as fresh:
        _, vectors = fresh._store.ids_and_vectors("image")
    queries = [v.tolist() for v in vectors[:: len(vectors) // 6][:6]]
    problems: list[str] = []
    counts = {"library": 0, "http": 0}
    counting = threading.Lock()

    def check(where: str, ids: list[int], start: float) -> None:
        gone = set(ids) & removed_before(removals(log), start)
        if len(ids) != K or len(set(ids)) != K or gone:
            problems.append(f"{where}: {len(ids)} hits, removed {sorted(gone)}")
        with counting:
            counts[where.split()[0]] += 1

    with (
        CrossGapIndex.open(index, device="cpu") as library,
        CrossGapIndex.open(index, device="cpu") as served,
        running_server(served, ServeSettings(follow_interval_s=0.2)) as url,
    ):
        for mode in THREAD_MODES:  # the first inversions and fits, before the clock of the writer starts
            library.search_batch([{"vector": queries[0], "modality": "image"}], mode=mode, k=K, inversion=FEW)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        writer = subprocess.Popen(
            [sys.executable, "-m", "tests.support.living_writer", str(index), str(log), str(CYCLES)],
            cwd=REPO,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )

        wait_until_ready(log, writer)

        def library_reader(n: int) -> None:
            step = n
            while writer.poll() is None:
                step += 1
                mode, query = THREAD_MODES[step % len(THREAD_MODES)], queries[step % len(queries)]
                start = time.monotonic()
                try:
                    if n == 0 and step % 4 == 0:
                        library.refresh()  # swaps under the other seven threads' searches
                    query_dict = {"vector": query, "modality": "image"}
                    hits = library.search_batch([query_dict], mode=mode, k=K, inversion=FEW)[0]
                    check(f"library {mode}", [h.id for h in hits], start)
                except Exception as exc:  # noqa: BLE001 - every failure is collected and reported
                    problems.append(f"library {mode}: {type(exc).__name__}: {exc}")

        def http_reader(n: int) -> None:
            step = n
            with httpx.Client(base_url=url, timeout=120) as client:
                while writer.poll() is None:
                    step += 1
                    mode, query = THREAD_MODES[step % len(THREAD_MODES)], queries[step % len(queries)]
                    start = time.monotonic()
                    body = {"vector": query, "modality": "image", "mode": mode, "k": K, "steps": 4}
                    response = client.post("/search", json=body)
                    if response.status_code != 200:
                        problems.append(f"http {mode}: {response.status_code} {response.text[:200]}")
                        continue
                    check(f"http {mode}", [h["id"] for h in response.json()["hits"]], start)

        threads = [threading.Thread(target=library_reader, args=(n,)) for n in range(8)]
        threads += [threading.Thread(target=http_reader, args=(n,)) for n in range(2)]
        for thread in threads:
            thread.start()
        _, err = writer.communicate(timeout=600)
        for thread in threads:
            thread.join()
        assert writer.returncode == 0, err
        assert log.read_text().splitlines()[-1] == f"done {CYCLES}"
        assert problems == []
        assert counts["library"] >= 8 and counts["http"] >= 2, counts
        deadline = time.monotonic() + 30  # the server follows the writer's last state by itself
        while served.generation != library.saved_generation() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served.generation == library.saved_generation()
