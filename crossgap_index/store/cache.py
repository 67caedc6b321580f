"""cache.sqlite: inverted query features, apart from the catalog.

Filling the cache is a side effect of reading (a --cross query), so it lives in its own file: writing
it never touches the catalog's generation, and the FAISS files stay valid. An index whose cache is a
table inside catalog.sqlite (schema 1) has those rows copied over once, when cache.sqlite is made.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

CACHE_NAME = "cache.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS inversion_cache (key TEXT PRIMARY KEY, vector BLOB NOT NULL)"


_KEYS_PER_SELECT = 500  # below SQLite's smallest bound-parameter limit (999)


class InversionCache:
    """Key -> float32 vector. Safe from many threads; a cache that cannot be used is simply skipped:
    it never fails a search (a read-only index directory, a damaged cache file). ``get_many`` /
    ``put_many`` are what the search layer calls (search/transforms.py): a batch is one lookup and one
    commit."""

    def __init__(self, directory: Path, writable: bool, legacy_catalog: Path | None = None):
        self.path = (directory / CACHE_NAME).absolute()  # as_uri needs an absolute path
        self._writable = writable
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._opened = False
        self._legacy = legacy_catalog

    def _connection(self) -> sqlite3.Connection | None:
        """Opened on first use (most opens never invert a query)."""
        if self._opened:
            return self._conn
        self._opened = True
        try:
            if self._writable:
                fresh = not self.path.exists()
                conn = sqlite3.connect(self.path.as_uri(), uri=True, check_same_thread=False, timeout=10)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(_SCHEMA)
                conn.commit()
                if fresh and self._legacy is not None:
                    _copy_legacy_rows(conn, self._legacy)
            elif self.path.exists():
                conn = sqlite3.connect(f"{self.path.as_uri()}?immutable=1", uri=True, check_same_thread=False)
                conn.execute("SELECT 1 FROM inversion_cache LIMIT 1")
            else:
                return None
        except sqlite3.Error:
            return None  # the cache is an optimisation: without it, inversions are recomputed
        self._conn = conn
        return conn

    def get(self, key: str) -> np.ndarray | None:
        return self.get_many([key]).get(key)

    def put(self, key: str, vector: np.ndarray) -> None:
        self.put_many({key: vector})

    def get_many(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of those ``keys`` that are cached (a missing key is simply absent)."""
        unique = list(dict.fromkeys(keys))
        rows: list[tuple[str, bytes]] = []
        with self._lock:
            conn = self._connection()
            if conn is None:
                return {}
            try:
                for start in range(0, len(unique), _KEYS_PER_SELECT):
                    chunk = unique[start : start + _KEYS_PER_SELECT]
                    marks = ",".join("?" * len(chunk))
                    sql = f"SELECT key, vector FROM inversion_cache WHERE key IN ({marks})"
                    rows.extend(conn.execute(sql, chunk).fetchall())
            except sqlite3.Error:
                return {}
        return {key: np.frombuffer(blob, dtype=np.float32).copy() for key, blob in rows}

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store every (key, vector) in one commit; a cache that cannot be written keeps none of them."""
        if not self._writable or not items:
            return
        blobs = [(key, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for key, v in items.items()]
        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                conn.executemany("INSERT OR REPLACE INTO inversion_cache (key, vector) VALUES (?, ?)", blobs)
                conn.commit()
            except sqlite3.Error:
                conn.rollback()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
            self._conn, self._opened = None, False


def _copy_legacy_rows(conn: sqlite3.Connection, catalog: Path) -> None:
    """Carry an old index's cache (a table in catalog.sqlite) into cache.sqlite; the catalog is only read."""
    conn.execute("ATTACH DATABASE ? AS legacy", (f"{catalog.as_uri()}?mode=ro",))
    try:
        has_table = conn.execute(
            "SELECT 1 FROM legacy.sqlite_master WHERE type = 'table' AND name = 'inversion_cache'"
        ).fetchone()
        if has_table:
            conn.execute("INSERT OR IGNORE INTO main.inversion_cache SELECT key, vector FROM legacy.inversion_cache")
            conn.commit()
    finally:
        conn.execute("DETACH DATABASE legacy")
