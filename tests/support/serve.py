"""Helpers for the `cgx serve` tests: a small crossgap-small index (built once per run: conftest's
``serve_template``; each module gets its own copy) and a real uvicorn server on a free loopback port (real
HTTP)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.server.app import create_app
from crossgap_index.server.settings import ServeSettings

SERVE_MODEL = "crossgap-small"
N_IMAGES = 48
N_TEXTS = 60


def build_index(root: Path) -> tuple[Path, Path]:
    """A crossgap-small index of 48 synthetic photos and 60 of their captions; returns (index, photos)."""
    photos = export_folder(root / "photos", seed=11, n=N_IMAGES)
    captions = [json.loads(line)["text"] for line in (photos / "captions.jsonl").read_text().splitlines()]
    with CrossGapIndex.create(root / "index", model=SERVE_MODEL, device="cpu") as cgx:
        cgx.index_folders([photos])
        cgx.add_texts(captions[:N_TEXTS])
    return root / "index", photos


def copy_index(template: tuple[Path, Path], root: Path) -> tuple[Path, Path]:
    """A module's own copy of the session's serve index under ``root``, so what one module writes (texts,
    removals, caches) no other sees; returns (index, photos). The photos stay shared: the catalog names them,
    and a test that moves one puts it back."""
    shutil.copytree(template[0], root / "index")
    return root / "index", template[1]


@contextmanager
def running_server(index: CrossGapIndex, settings: ServeSettings) -> Iterator[str]:
    """``create_app(index, settings)`` under uvicorn in a thread; yields its base URL; stops it gracefully."""
    config = uvicorn.Config(create_app(index, settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
