"""Gallery-side fits are bounded (search/fitting.py): computed in blocks that equal the straightforward fits, run
by the server on a background thread of their own (intra answers while a dba fit is held at a known point, the
dba request gets 503 with Retry-After, then the fitted answer), stopped between blocks when their runner closes,
and reported on stderr when large."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

import httpx
import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.errors import QueryError
from crossgap_index.pause_points import PAUSE_ENV
from crossgap_index.search import fitting
from crossgap_index.search.fitting import BackgroundFits, FitCancelled, FitPending
from crossgap_index.search.gallery import MatrixGallery
from crossgap_index.search.peers import _kept_mean, dba_rows, dba_rows_blocked, top_k_mean, top_k_mean_blocked
from crossgap_index.search.post import bank_statistics, bank_statistics_blocked
from crossgap_index.server.settings import ServeSettings
from tests.support.pause import pause_env, wait_until_paused
from tests.support.serve import copy_index, running_server

QUERY = {"text": "a red circle", "k": 5, "target": "images"}


def unit_rows(rng: np.random.Generator, n: int, d: int = 24) -> np.ndarray:
    rows = rng.standard_normal((n, d)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# -- the blocked fits equal the straightforward ones (more rows than one FIT_BLOCK) -----------------------------
@pytest.mark.parametrize(("n", "alpha"), [(1, 3.0), (3, 3.0), (10, 1.0)])
def test_blocked_dba_equals_the_straightforward_fit(n, alpha):
    rng = np.random.default_rng(n)
    bank = unit_rows(rng, 3000)
    rows = np.concatenate([bank[:2500], unit_rows(rng, 2000)])  # gallery rows find themselves first
    np.testing.assert_allclose(dba_rows_blocked(rows, bank, n, alpha), dba_rows(rows, bank, n, alpha), atol=2e-6)


@pytest.mark.parametrize("k", [1, 16, 5000])  # 5000: more than the bank holds, all of it
def test_blocked_nnn_bias_equals_the_straightforward_fit(k):
    rng = np.random.default_rng(k)
    rows, bank = unit_rows(rng, 4500), unit_rows(rng, 2500)
    np.testing.assert_allclose(top_k_mean_blocked(rows, bank, k), top_k_mean(rows, bank, k), atol=2e-6)


def test_blocked_qbnorm_statistics_equal_the_straightforward_fit():
    rng = np.random.default_rng(7)
    gallery, bank = unit_rows(rng, 4200), unit_rows(rng, 2600)
    ids = rng.permutation(10_000)[:4200].astype(np.int64)
    bank_ids = np.concatenate([ids[:1000], 20_000 + np.arange(1600)])  # some bank rows are gallery items
    bank[:1000] = gallery[:1000]
    blocked = bank_statistics_blocked(ids, gallery, bank_ids, bank, 20.0)
    plain = bank_statistics(ids, gallery, bank_ids, bank, 20.0)
    np.testing.assert_array_equal(blocked.ids, plain.ids)
    np.testing.assert_allclose(blocked.log_z, plain.log_z, rtol=1e-9, atol=1e-6)
    np.testing.assert_array_equal(blocked.active, plain.active)


def test_the_blocked_mean_equals_numpys():
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng, 5000)
    gallery = MatrixGallery({"image": (np.arange(5000), vectors)})
    np.testing.assert_allclose(_kept_mean(gallery, "image", "center"), vectors.mean(axis=0), atol=1e-6)


# -- the server: fits in the background, never in the search pool ---------------------------------------------
def test_a_failed_background_fit_answers_with_its_error_until_the_gallery_changes():
    runs = []
    release = {1: threading.Event(), 2: threading.Event()}  # each fit fails once the test has seen it pending

    def work(version: int):
        def fit(progress):
            runs.append(version)
            release[version].wait(60)
            raise QueryError("nnn: the index has no text vectors to draw its statistics from")

        return fit

    fits = BackgroundFits()
    try:
        with pytest.raises(FitPending) as pending:
            fits.run("slot", 1, "nnn", 0, work(1))
        release[1].set()
        assert isinstance(pending.value.job.future.exception(timeout=60), QueryError)
        for _ in range(3):  # not fitted again and again: the error, at once
            with pytest.raises(QueryError, match="no text vectors"):
                fits.run("slot", 1, "nnn", 0, work(1))
        assert runs == [1]
        with pytest.raises(FitPending) as pending:  # a new gallery version is fitted afresh
            fits.run("slot", 2, "nnn", 0, work(2))
        release[2].set()
        assert isinstance(pending.value.job.future.exception(timeout=60), QueryError)
        assert runs == [1, 2]
    finally:
        fits.close()


@pytest.fixture
def index_dir(serve_template, tmp_path):
    return copy_index(serve_template, tmp_path)[0]


@pytest.mark.slow
def test_the_server_answers_intra_while_a_dba_fit_is_held(index_dir, tmp_path, monkeypatch):
    with CrossGapIndex.open(index_dir, device="cpu") as cgx:  # the answer the fitted mode must give
        expected = [h.id for h in cgx.search(text=QUERY["text"], k=5, mode="dba")]
    for leftover in (index_dir / "derived").glob("*dba*"):
        leftover.unlink()  # the derived dba collection is built again by the server
    pause, fifo = pause_env(tmp_path, "fit-block")
    monkeypatch.setenv(PAUSE_ENV, pause[PAUSE_ENV])
    settings = ServeSettings(request_timeout_s=5.0, search_threads=2)
    with CrossGapIndex.open(index_dir, device="cpu") as cgx:
        cgx.search(text=QUERY["text"], k=5)  # the model is loaded before the server's short timeout counts
        with running_server(cgx, settings) as url, httpx.Client(base_url=url, timeout=60) as client:
            _served_while_held(client, fifo, expected)


def _served_while_held(client: httpx.Client, fifo, expected: list[int]) -> None:
    """Intra answers while the dba fit waits at its pause point; dba answers 503, then the fitted hits."""
    before = client.post("/search", json=QUERY)
    assert before.status_code == 200, before.text
    intra_before = before.json()["hits"]
    deadline = time.monotonic() + 300
    while True:  # the map's own fit, then the derived build: asked until the fit thread waits at its first block
        first = client.post("/search", json={**QUERY, "mode": "dba"})
        assert first.status_code == 503, first.text
        try:
            held = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO until the fit thread has it open
            break
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
        assert time.monotonic() < deadline, "the dba fit never reached its first block"
    try:
        assert first.status_code == 503, first.text
        assert int(first.headers["retry-after"]) >= 1
        message = first.json()["error"]
        assert "being fitted in the background" in message and "\n" not in message, message
        for _ in range(5):  # every search thread is free: intra answers at once, the same as before
            response = client.post("/search", json=QUERY)
            assert response.status_code == 200, response.text
            assert response.json()["hits"] == intra_before
        assert client.post("/search", json={**QUERY, "mode": "dba"}).status_code == 503  # still held
    finally:
        os.close(held)  # the fit goes on
    deadline = time.monotonic() + 300
    while (response := client.post("/search", json={**QUERY, "mode": "dba"})).status_code == 503:
        assert time.monotonic() < deadline, "the dba fit never finished"
    assert response.status_code == 200, response.text
    assert [h["id"] for h in response.json()["hits"]] == expected


@pytest.mark.slow
def test_closing_the_runner_stops_a_running_fit_between_blocks(index_dir, tmp_path, monkeypatch):
    pause, fifo = pause_env(tmp_path, "fit-block")
    monkeypatch.setenv(PAUSE_ENV, pause[PAUSE_ENV])
    for leftover in (index_dir / "derived").glob("*dba*"):
        leftover.unlink()
    with CrossGapIndex.open(index_dir, device="cpu") as cgx:
        fits = cgx.fit_in_background()
        job = None
        deadline = time.monotonic() + 120
        while job is None or "derived" not in job.label:  # the map's own fit first, then the derived build
            try:
                cgx.search(text=QUERY["text"], k=5, mode="dba")
                raise AssertionError("dba answered before its derived collection was built")
            except FitPending as pending:
                job = pending.job
                if "derived" not in job.label:
                    job.future.exception(timeout=120)  # the map's own (quick) fit: wait, then ask again
            assert time.monotonic() < deadline
        held = wait_until_paused(None, fifo)
        closing = threading.Thread(target=fits.close)
        closing.start()  # cancels, then waits for the fit thread
        os.close(held)  # the fit leaves its pause point and finds itself cancelled
        closing.join(120)
        assert not closing.is_alive()
        assert isinstance(job.future.exception(timeout=0), FitCancelled)
        assert job.progress.done == 0  # it stopped at its first block
        assert not list((index_dir / "derived").glob("*dba*"))  # nothing half-built was saved
        with pytest.raises(FitCancelled, match="shutting down"):
            cgx.search(text=QUERY["text"], k=5, mode="dba")


def test_a_large_fit_reports_progress_on_stderr(index_dir, monkeypatch, caplog):
    monkeypatch.setattr(fitting, "LOUD_ROWS", 1)  # the test index is small: every fit counts as large
    monkeypatch.setattr(fitting, "LOUD_EVERY_S", 0.0)
    for leftover in (index_dir / "derived").glob("*dba*"):
        leftover.unlink()
    with caplog.at_level(logging.WARNING, logger="crossgap_index"), CrossGapIndex.open(index_dir) as cgx:
        cgx.search(text=QUERY["text"], k=5, mode="dba")
    said = [r.getMessage() for r in caplog.records if r.name == "crossgap_index"]
    assert any(m.startswith("cgx: fitting the derived collection image@dba") and "rows" in m for m in said), said
    assert any(m.startswith("cgx: fitted the derived collection image@dba") for m in said), said
