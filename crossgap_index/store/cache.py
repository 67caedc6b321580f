"""cache.sqlite: inverted query features, apart from the catalog.

Filling the cache is a side effect of reading (a --cross query), so it lives in its own file: writing
it never touches the catalog's generation, and the FAISS files stay valid. Indexes made before this
file existed kept the cache as a table inside catalog.sqlite; its rows are copied over once.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np

CACHE_NAME = "cache.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS inversion_cache (key TEXT PRIMARY KEY, vector BLOB NOT NULL)"


class InversionCache:
    """Key -> float32 vector. Safe from many threads; a cache that cannot be used is simply skipped:
    it never fails a search (a read-only index directory, a damaged cache file)."""

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
        with self._lock:
            conn = self._connection()
            if conn is None:
                return None
            try:
                row = conn.execute("SELECT vector FROM inversion_cache WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error:
                return None
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def put(self, key: str, vector: np.ndarray) -> None:
        if not self._writable:
            return
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        with self._lock:
            conn = self._connection()
            if conn is None:
                return
            try:
                conn.execute("INSERT OR REPLACE INTO inversion_cache (key, vector) VALUES (?, ?)", (key, blob))
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
