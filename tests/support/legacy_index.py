"""An index directory in the previous release's layout (catalog schema 1: every vector a BLOB in its
catalog row, no ``vectors/``), made with raw sqlite3 exactly as that release's store wrote it.

``to_legacy`` turns an index built by this release into that layout, keeping its manifest and FAISS
files (which the previous release wrote in the same format), so a test can compare the old index's
answers before and after migration.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np

# The previous release's schema (crossgap_index/store/catalog.py at a8c24fe), verbatim.
LEGACY_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    path TEXT,
    text TEXT,
    external_id TEXT,
    content_hash TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    vector BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS items_image_path ON items (path) WHERE modality = 'image';
CREATE UNIQUE INDEX IF NOT EXISTS items_text_hash ON items (content_hash) WHERE modality = 'text';
CREATE INDEX IF NOT EXISTS items_hash ON items (content_hash);
CREATE INDEX IF NOT EXISTS items_modality ON items (modality);
CREATE TABLE IF NOT EXISTS derived_vectors (
    kind TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    PRIMARY KEY (kind, item_id)
);
"""


def _shard_vectors(index: Path, stream: str, dim: int) -> np.ndarray:
    files = sorted((index / "vectors").glob(f"{stream}-*.f32"))
    if not files:
        return np.zeros((0, dim), np.float32)
    return np.concatenate([np.fromfile(f, np.float32).reshape(-1, dim) for f in files])


def to_legacy(index: Path, dim: int) -> None:
    """Rewrite ``index``'s catalog in schema 1 (same ids, rows, vectors, generation and id sequence)."""
    new = sqlite3.connect(index / "catalog.sqlite")
    items = new.execute(
        "SELECT id, modality, path, text, external_id, content_hash, size, mtime_ns, slot FROM items ORDER BY id"
    ).fetchall()
    derived = new.execute("SELECT kind, item_id, slot FROM derived_vectors ORDER BY kind, item_id").fetchall()
    meta = dict(new.execute("SELECT key, value FROM meta"))
    seq = new.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
    new.close()
    vectors = {"items": _shard_vectors(index, "items", dim)}
    for kind in {r[0] for r in derived}:
        vectors[kind] = _shard_vectors(index, kind, dim)
    for suffix in ("", "-wal", "-shm"):
        (index / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    shutil.rmtree(index / "vectors")

    old = sqlite3.connect(index / "catalog.sqlite")
    old.execute("PRAGMA journal_mode = WAL")
    old.executescript(LEGACY_SCHEMA)
    old.executemany(
        "INSERT INTO items (id, modality, path, text, external_id, content_hash, size, mtime_ns, vector) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*r[:8], vectors["items"][r[8]].tobytes()) for r in items],
    )
    old.executemany(
        "INSERT INTO derived_vectors (kind, item_id, vector) VALUES (?, ?, ?)",
        [(kind, item_id, vectors[kind][slot].tobytes()) for kind, item_id, slot in derived],
    )
    old.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'items'", (seq[0] if seq else 0,))
    old.executemany(
        "INSERT INTO meta (key, value) VALUES (?, ?)",
        [("schema_version", "1"), ("generation", meta["generation"])],
    )
    old.commit()
    old.close()
