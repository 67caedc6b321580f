"""SQLite catalog: the source of truth for what an index holds.

Every item (image file or text) has a stable int64 id, its content hash, file stat
and its unit vector. FAISS indexes are derived from this table and can always be
rebuilt from it, so a crash between a catalog commit and a FAISS save loses nothing.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossgap_index.errors import StoreError

CATALOG_SCHEMA_VERSION = 1

_SCHEMA = """
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
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    content_hash: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ItemRow:
    """What a search hit needs to know about a stored item."""

    id: int
    modality: str
    path: str | None
    text: str | None
    external_id: str | None


# ids per `IN (...)` query: under SQLite's limit on bound parameters (999 in older builds)
_ID_CHUNK = 900


class Catalog:
    """Thin typed wrapper over one SQLite file, with one connection per thread.

    Each thread reads through its own connection (WAL: readers see committed data and never block);
    the writing thread sees its own uncommitted rows. ``readonly`` opens the file read-only (an index
    directory that cannot be written: no -wal/-shm can be made there either, so it is opened immutable).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        check_header(path)
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.executescript(_SCHEMA)
            version = self.get_meta("schema_version")
            if version is None and not readonly:
                self.set_meta("schema_version", str(CATALOG_SCHEMA_VERSION))
                self.set_meta("generation", "0")
                self.conn.commit()
            elif version is None or not version.isdigit():
                raise StoreError(f"{path}: not a crossgap catalog (no schema version)")
            elif int(version) > CATALOG_SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: catalog schema {version} is newer than this crossgap-index understands "
                    f"({CATALOG_SCHEMA_VERSION}); upgrade crossgap-index"
                )
        except sqlite3.DatabaseError as exc:
            self.close()
            raise StoreError(f"{path}: damaged catalog ({exc}); restore it from a backup") from exc

    @property
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (made on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        if not self.readonly:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA foreign_keys = ON")
            return conn
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, check_same_thread=False, timeout=30)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        except sqlite3.OperationalError:  # WAL needs a -shm file it cannot make in a read-only directory
            if header_shortfall(self.path) and wal_has_frames(self.path):  # immutable reads skip the WAL
                raise StoreError(
                    f"{self.path}: a checkpoint was interrupted (a full disk?) and its pages are in the WAL, which "
                    "cannot be read where the directory is read-only; run `cgx check --repair` where it can be written"
                ) from None
            conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)
        return conn

    def close(self) -> None:
        with self._conns_lock:
            conns, self._conns = self._conns, []
        for conn in conns:  # the last connection to close checkpoints the WAL into catalog.sqlite
            conn.close()
        self._local = threading.local()

    def commit(self) -> None:
        """Commit pending writes and bump the generation the FAISS files are checked against."""
        self.set_meta("generation", str(self.generation + 1))
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def checkpoint(self) -> bool:
        """Write every page of the WAL into the main file and empty the WAL (what an interrupted
        checkpoint left undone); False when a reader kept it from completing."""
        busy, _, _ = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return busy == 0

    def integrity_check(self) -> list[str]:
        """SQLite's own verdict on the file: ``[]`` when sound, else its messages."""
        rows = [r[0] for r in self.conn.execute("PRAGMA integrity_check")]
        return [] if rows == ["ok"] else rows

    # -- meta ---------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    # -- items --------------------------------------------------------------------------
    def count(self, modality: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0]

    def images(self) -> dict[str, ImageRecord]:
        """Every stored image keyed by its absolute path."""
        rows = self.conn.execute("SELECT id, path, content_hash, size, mtime_ns FROM items WHERE modality = 'image'")
        records = (ImageRecord(r[0], path_from_db(r[1]), *r[2:]) for r in rows)
        return {r.path: r for r in records}

    def image_record(self, item_id: int) -> ImageRecord | None:
        """One image's file as indexed (path, content hash, size, mtime), or None."""
        row = self.conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns FROM items WHERE id = ? AND modality = 'image'",
            (int(item_id),),
        ).fetchone()
        return ImageRecord(row[0], path_from_db(row[1]), *row[2:]) if row else None

    def vector_by_hash(self, content_hash: str) -> np.ndarray | None:
        row = self.conn.execute("SELECT vector FROM items WHERE content_hash = ? LIMIT 1", (content_hash,)).fetchone()
        return _to_vector(row[0]) if row else None

    def known_hashes(self, modality: str) -> set[str]:
        rows = self.conn.execute("SELECT content_hash FROM items WHERE modality = ?", (modality,))
        return {r[0] for r in rows}

    def add_image(self, path: str, content_hash: str, size: int, mtime_ns: int, vector: np.ndarray) -> int:
        cur = self.conn.execute(
            "INSERT INTO items (modality, path, content_hash, size, mtime_ns, vector) VALUES ('image', ?, ?, ?, ?, ?)",
            (path_to_db(path), content_hash, size, mtime_ns, _to_blob(vector)),
        )
        return int(cur.lastrowid)

    def update_stat(self, item_id: int, size: int, mtime_ns: int) -> None:
        self.conn.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, item_id))

    def add_text(self, text: str, content_hash: str, external_id: str | None, vector: np.ndarray) -> int:
        cur = self.conn.execute(
            "INSERT INTO items (modality, text, external_id, content_hash, vector) VALUES ('text', ?, ?, ?, ?)",
            (text, external_id, content_hash, _to_blob(vector)),
        )
        return int(cur.lastrowid)

    def remove(self, ids: Iterable[int]) -> None:
        self.conn.executemany("DELETE FROM items WHERE id = ?", [(int(i),) for i in ids])

    def rows(self, ids: Sequence[int]) -> dict[int, ItemRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        cur = self.conn.execute(
            f"SELECT id, modality, path, text, external_id FROM items WHERE id IN ({marks})",
            [int(i) for i in ids],
        )
        return {r[0]: ItemRow(r[0], r[1], path_from_db(r[2]), *r[3:]) for r in cur}

    def ids_and_vectors(self, modality: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.conn.execute("SELECT id, vector FROM items WHERE modality = ? ORDER BY id", (modality,)).fetchall()
        return _stack(rows, dim)

    def vectors_for(self, ids: Sequence[int], dim: int, kind: str | None = None) -> np.ndarray:
        """Vectors of ``ids`` in the given order (for exact re-ranking of candidates): the items' own,
        or with ``kind`` their derived vectors."""
        if len(ids) == 0:
            return np.zeros((0, dim), np.float32)
        marks = ",".join("?" * len(ids))
        params: list = [int(i) for i in ids]
        if kind is None:
            sql = f"SELECT id, vector FROM items WHERE id IN ({marks})"
        else:
            sql = f"SELECT item_id, vector FROM derived_vectors WHERE kind = ? AND item_id IN ({marks})"
            params.insert(0, kind)
        found = dict(self.conn.execute(sql, params))
        return np.stack([_to_vector(found[int(i)]) for i in ids])

    # -- vectors derived from items (e.g. each gallery image's OTI feature) ---------------
    def set_derived(self, kind: str, item_ids: Sequence[int], vectors: np.ndarray) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO derived_vectors (kind, item_id, vector) VALUES (?, ?, ?)",
            [(kind, int(i), _to_blob(v)) for i, v in zip(item_ids, vectors, strict=True)],
        )

    def clear_derived(self, kind: str) -> None:
        self.conn.execute("DELETE FROM derived_vectors WHERE kind = ?", (kind,))

    def content_hashes_of(self, ids: Sequence[int]) -> list[str]:
        """Content hashes of items of any modality, in the order of ``ids`` (any number of them: queried in
        chunks that stay under SQLite's limit on bound parameters)."""
        wanted = [int(i) for i in ids]
        found: dict[int, str] = {}
        for first in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[first : first + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(f"SELECT id, content_hash FROM items WHERE id IN ({marks})", chunk))
        return [found[i] for i in wanted]

    def count_derived(self, kind: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM derived_vectors WHERE kind = ?", (kind,)).fetchone()[0]

    def derived_ids(self, kind: str) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT item_id FROM derived_vectors WHERE kind = ?", (kind,))}

    def derived_ids_and_vectors(self, kind: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.conn.execute(
            "SELECT item_id, vector FROM derived_vectors WHERE kind = ? ORDER BY item_id", (kind,)
        ).fetchall()
        return _stack(rows, dim)

    def vector_chunks(self, name: str, derived: bool, dim: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of a modality's items (or, ``derived``, of one kind of derived vector) in id order,
        ``size`` rows at a time: keyset pagination, so memory stays at one chunk whatever the index size."""
        if derived:
            sql = "SELECT item_id, vector FROM derived_vectors WHERE kind = ? AND item_id > ? ORDER BY item_id LIMIT ?"
        else:
            sql = "SELECT id, vector FROM items WHERE modality = ? AND id > ? ORDER BY id LIMIT ?"
        last = -1
        while True:
            rows = self.conn.execute(sql, (name, last, size)).fetchall()
            if not rows:
                return
            yield _stack(rows, dim)
            last = rows[-1][0]

    def derived_for(self, kind: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The ``kind`` vectors of those of ``ids`` that have one (exports of partly inverted galleries)."""
        if len(ids) == 0:
            return {}
        marks = ",".join("?" * len(ids))
        sql = f"SELECT item_id, vector FROM derived_vectors WHERE kind = ? AND item_id IN ({marks})"
        return {r[0]: _to_vector(r[1]) for r in self.conn.execute(sql, [kind, *(int(i) for i in ids)])}

    # -- listing (ls, remove, check) --------------------------------------------------------
    def items(self, modality: str | None = None, after: int = 0, limit: int = -1) -> list[ItemRow]:
        """Items by id; ``after`` and ``limit`` page through them (keyset: ids above ``after``, -1: no limit)."""
        sql = "SELECT id, modality, path, text, external_id FROM items WHERE id > ?"
        params: tuple = (after,)
        if modality is not None:
            sql, params = sql + " AND modality = ?", (after, modality)
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", (*params, limit))
        return [ItemRow(r[0], r[1], path_from_db(r[2]), *r[3:]) for r in rows]

    def ids(self, name: str, derived: bool = False) -> np.ndarray:
        """Stored ids of a modality (or of a derived collection), sorted."""
        if derived:
            cur = self.conn.execute("SELECT item_id FROM derived_vectors WHERE kind = ? ORDER BY item_id", (name,))
        else:
            cur = self.conn.execute("SELECT id FROM items WHERE modality = ? ORDER BY id", (name,))
        return np.fromiter((r[0] for r in cur), dtype=np.int64)


def path_to_db(path: str) -> str | bytes:
    """A file name as SQLite can hold it: UTF-8 text, or the name's own bytes (a BLOB) when it is not
    valid UTF-8 (os gives such names as surrogate-escaped str, which SQLite cannot encode)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_from_db(value: str | bytes | None) -> str | None:
    """The inverse of ``path_to_db``: ``os.fsencode`` of the result gives the file name's bytes back."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def _to_blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def _to_vector(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


def _stack(rows: list[tuple[int, bytes]], dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
    return ids, vectors


def check_header(path: Path) -> None:
    """Fail in one line on a file that is not an SQLite database or was cut short (SQLite itself
    would only notice later, mid-query): the header's page count must fit in the file, unless the
    write-ahead log still holds pages (a checkpoint interrupted by a full disk leaves the header ahead
    of the file; SQLite reads those pages from the WAL, and the next checkpoint writes them)."""
    shortfall = header_shortfall(path)
    if shortfall and not wal_has_frames(path):
        size = path.stat().st_size
        raise StoreError(
            f"{path}: damaged catalog (truncated: {size} bytes, the header promises {size + shortfall}); "
            "restore it from a backup"
        )


def header_shortfall(path: Path) -> int:
    """How many bytes the header's page count promises beyond the file's size (0: whole, or new)."""
    try:
        size = path.stat().st_size
        if size == 0:
            return 0  # a new database
        with path.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the catalog ({exc.strerror or exc})") from exc
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise StoreError(f"{path}: damaged catalog (not an SQLite database); restore it from a backup")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    pages = int.from_bytes(header[28:32], "big")
    valid_for = int.from_bytes(header[92:96], "big")
    change_counter = int.from_bytes(header[24:28], "big")
    if valid_for != change_counter:
        return 0  # the page count is not maintained (a legacy writer): nothing to compare
    return max(0, pages * page_size - size)


def wal_has_frames(path: Path) -> bool:
    """Whether the catalog's write-ahead log holds pages not yet checkpointed into the file (a header
    of 32 bytes plus at least one frame)."""
    try:
        return os.stat(f"{path}-wal").st_size > 32
    except OSError:
        return False
