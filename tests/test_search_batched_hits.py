"""A batch of queries looks its hits up in the catalog once (one SQL statement for the whole batch; the catalog
splits a longer id list under SQLite's parameter cap), and every query's hits equal its solo search (the
per-query lookup, the oracle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from tests.support.photos import MODEL

N = 400
DIM = 64  # tiny-random's embed_dim
K = 10


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("batched-hits")
    np.save(folder / "emb.npy", np.random.default_rng(3).standard_normal((N, DIM)).astype(np.float32))
    with (folder / "meta.jsonl").open("w") as f:
        for i in range(1, N + 1):
            f.write(json.dumps({"path": f"/photos/{i}.jpg", "external_id": f"x{i}"}) + "\n")
    CrossGapIndex.import_embeddings(folder / "emb.npy", folder / "idx", MODEL, meta=folder / "meta.jsonl")
    return folder / "idx"


def _item_lookups(cgx: CrossGapIndex, run) -> tuple[object, list[str]]:
    """``run()``'s result and the catalog statements that looked items up by id while it ran (SQLite's trace)."""
    statements: list[str] = []
    conn = cgx._store.catalog.conn
    conn.set_trace_callback(statements.append)
    try:
        result = run()
    finally:
        conn.set_trace_callback(None)
    return result, [s for s in statements if "FROM items WHERE id IN" in s]


def test_a_batch_looks_its_hits_up_once_and_equals_each_solo_search(index):
    queries = np.random.default_rng(5).standard_normal((12, DIM)).astype(np.float32)
    with CrossGapIndex.open(index, readonly=True) as cgx:
        batch, lookups = _item_lookups(cgx, lambda: cgx.search_batch([{"vector": q} for q in queries], k=K))
        assert len(lookups) == 1
        for q, hits in zip(queries, batch, strict=True):
            solo = cgx.search(vector=q, k=K)
            assert [(h.id, h.score, h.path, h.external_id) for h in hits] == [
                (h.id, h.score, h.path, h.external_id) for h in solo
            ]
            assert all(h.path == f"/photos/{h.id}.jpg" for h in hits) and len(hits) == K
