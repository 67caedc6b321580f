"""SQLite catalog: what an index holds, and where each vector lives.

Every item (image file or text) has a stable int64 id, its content hash, file stat and its vector's
*slot* in the append-only shard files under ``vectors/`` (store/shards.py); the catalog's ``shards``
table records each shard's committed rows and crc32, in the same transaction as the rows that point
into it. The source of truth is the catalog's rows plus the shard bytes they point at, verified against
those records. FAISS indexes are derived from it and can always be rebuilt from it, so a crash between
a catalog commit and a FAISS save loses nothing.

Indexes written before the shards (catalog schema 1) kept each vector as a BLOB in its row. Such a
catalog is still read as it is (read-only mounts serve without change) and is migrated once, under the
writer lock, by ``migrate_to_shards`` on the first writable open.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.store.shards import (
    ITEMS_STREAM,
    SHARD_ROWS,
    VECTORS_DIR,
    ShardRecord,
    ShardStore,
    read_again_if_moved,
)

CATALOG_SCHEMA_VERSION = 2  # 1: vectors as BLOBs in the rows; 2: vectors in shards, rows hold slots

_ITEMS_TABLE = """
CREATE TABLE {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    modality TEXT NOT NULL CHECK (modality IN ('image', 'text')),
    path TEXT,
    text TEXT,
    external_id TEXT,
    content_hash TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    slot INTEGER NOT NULL
)"""
_DERIVED_TABLE = """
CREATE TABLE {name} (
    kind TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    PRIMARY KEY (kind, item_id)
)"""
_ITEM_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS items_image_path ON items (path) WHERE modality = 'image'",
    "CREATE UNIQUE INDEX IF NOT EXISTS items_text_hash ON items (content_hash) WHERE modality = 'text'",
    "CREATE INDEX IF NOT EXISTS items_hash ON items (content_hash)",
    "CREATE INDEX IF NOT EXISTS items_modality ON items (modality)",
)
_COMMON = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shards (stream TEXT NOT NULL, number INTEGER NOT NULL, "
    "rows INTEGER NOT NULL, crc32 INTEGER NOT NULL, PRIMARY KEY (stream, number))",
    # Files a build could not use, with the stat and read limits they failed under: an unchanged one is not
    # read again. A table of its own (made on any writable open): a reader that does not know it reads the rest.
    "CREATE TABLE IF NOT EXISTS failed_files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, limits TEXT NOT NULL, reason TEXT NOT NULL)",
)
_SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_DTYPE = "float32"
MIGRATE_CHUNK = 16_384  # rows per read while moving an old catalog's vectors into shards


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
    """Thin typed wrapper over one SQLite file, with one connection per thread, and the shard files
    its rows point into.

    Each thread reads through its own connection (WAL: readers see committed data and never block);
    the writing thread sees its own uncommitted rows (and their vectors, queued until ``commit``).
    ``readonly`` opens the file read-only (an index directory that cannot be written: no -wal/-shm can
    be made there either, so it is opened immutable).
    """

    def __init__(self, path: Path, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._shards: ShardStore | None = None
        check_header(path)
        try:
            if not readonly:
                self.conn.execute("PRAGMA journal_mode = WAL")
                if not self._tables():
                    self._create_schema()
                for sql in _COMMON:
                    self.conn.execute(sql)
                self.conn.commit()
            self.legacy = "vector" in self._columns("items")
            version = self.get_meta("schema_version")
            if version is None and not readonly:
                self.set_meta("schema_version", "1" if self.legacy else str(CATALOG_SCHEMA_VERSION))
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

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _columns(self, table: str) -> set[str]:
        return {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}

    def _create_schema(self) -> None:
        self.conn.execute(_ITEMS_TABLE.format(name="items"))
        for sql in _ITEM_INDEXES:
            self.conn.execute(sql)
        self.conn.execute(_DERIVED_TABLE.format(name="derived_vectors"))

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
        if self._shards is not None:
            self._shards.close()

    def commit(self) -> None:
        """Make queued vectors durable in their shards, then commit the rows pointing at them together
        with the shards' new lengths and checksums, and bump the generation the FAISS files are checked
        against."""
        self._flush_shards()
        self.set_meta("generation", str(self.generation + 1))
        self.conn.commit()

    def commit_bookkeeping(self) -> None:
        """Commit rows that change no vector and no search result (a touched file's stat, an imported row's
        file hash, failure records): the generation stays, so FAISS files and derived collections stay current."""
        if self._shards is not None and self._shards.has_pending_rows():
            raise StoreError(f"{self.path}: vectors are queued; they are committed by commit()")
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()
        if self._shards is not None:
            self._shards.discard()

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

    # -- vector storage -------------------------------------------------------------------
    @property
    def vectors_dir(self) -> Path:
        return self.path.parent / VECTORS_DIR

    def set_vector_format(self, dim: int, dtype: str = DEFAULT_DTYPE) -> None:
        """Fix the shards' row width and number type (float32, or float16 at half the bytes); set once,
        before the first vector (committed with the caller's next commit)."""
        if self.get_meta("vector_dim") is None:
            ShardStore(self.vectors_dir, dim, dtype)  # validates dtype
            self.set_meta("vector_dim", str(dim))
            self.set_meta("vector_dtype", dtype)

    def vector_dtype(self) -> str:
        return "float32" if self.legacy else self.get_meta("vector_dtype") or DEFAULT_DTYPE

    def stored_dim(self) -> int | None:
        """Width of the stored vectors (None: nothing says yet)."""
        if self.legacy:
            row = self.conn.execute("SELECT length(vector) FROM items LIMIT 1").fetchone()
            return row[0] // 4 if row else None
        dim = self.get_meta("vector_dim")
        return int(dim) if dim is not None else None

    def shards(self, dim: int | None = None) -> ShardStore:
        """The shard files (made on first use; ``dim`` fixes the format of a catalog without one)."""
        if self._shards is None:
            if self.get_meta("vector_dim") is None:
                if dim is None:
                    raise StoreError(f"{self.path}: no vector format recorded and no vector to infer it from")
                self.set_vector_format(dim)
            self._shards = ShardStore(self.vectors_dir, int(self.get_meta("vector_dim")), self.vector_dtype())
        return self._shards

    def shard_records(self) -> list[ShardRecord]:
        if self.legacy:
            return []
        rows = self.conn.execute("SELECT stream, number, rows, crc32 FROM shards ORDER BY stream, number")
        return [ShardRecord(*r) for r in rows]

    def shard_problems(self, full: bool = False, streams: Iterable[str] | None = None) -> list[str]:
        """What is wrong with the shard files: sizes only (cheap, on open), or ``full``: their checksums."""
        records = self.shard_records()
        if streams is not None:
            wanted = set(streams)
            records = [r for r in records if r.stream in wanted]
        if not records:
            return []
        shards = self.shards()
        check = shards.verify if full else shards.size_problem
        return [p for p in map(check, records) if p]

    def _append(self, stream: str, vectors: np.ndarray) -> int:
        """Queue vectors for ``stream``'s shards; returns the first one's slot."""
        if self.legacy:
            raise StoreError(f"{self.path}: an old catalog (vectors inside it) is written only after migrating")
        vectors = np.atleast_2d(np.asarray(vectors))  # the shards cast to their dtype (float16 rows as they are)
        shards = self.shards(vectors.shape[1])
        next_slot = 0
        if not shards.has_pending(stream):
            row = self.conn.execute(
                "SELECT number, rows FROM shards WHERE stream = ? ORDER BY number DESC LIMIT 1", (stream,)
            ).fetchone()
            next_slot = row[0] * SHARD_ROWS + row[1] if row else 0
        return shards.append(stream, vectors, next_slot)

    def _flush_shards(self) -> None:
        if self._shards is None:
            return
        committed = {(r.stream, r.number): (r.rows, r.crc32) for r in self.shard_records()}
        records = self._shards.flush(committed)
        self.conn.executemany(
            "INSERT OR REPLACE INTO shards (stream, number, rows, crc32) VALUES (?, ?, ?, ?)",
            [(r.stream, r.number, r.rows, r.crc32) for r in records],
        )

    @property
    def _col(self) -> str:
        return "vector" if self.legacy else "slot"

    def _gather(self, stream: str, refs: Sequence, dim: int | None = None) -> np.ndarray:
        """Vectors of ``refs`` (slots; BLOBs in an old catalog) in their order, as float32."""
        if self.legacy:
            if not refs:
                return np.zeros((0, dim or 0), np.float32)
            return np.frombuffer(b"".join(refs), dtype=np.float32).reshape(len(refs), -1)
        if not refs:
            return np.zeros((0, dim if dim is not None else (self.stored_dim() or 0)), np.float32)
        return self.shards().gather(stream, np.fromiter(refs, np.int64, count=len(refs)))

    def _stack(self, stream: str, rows: list[tuple[int, object]], dim: int) -> tuple[np.ndarray, np.ndarray]:
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, self._gather(stream, [r[1] for r in rows], dim)

    # -- items --------------------------------------------------------------------------
    def count(self, modality: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0]

    def images(self) -> dict[str, ImageRecord]:
        """Every stored image file keyed by its absolute path (imported rows without a path are not files)."""
        rows = self.conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns FROM items WHERE modality = 'image' AND path IS NOT NULL"
        )
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
        row = self.conn.execute(
            f"SELECT {self._col} FROM items WHERE content_hash = ? LIMIT 1", (content_hash,)
        ).fetchone()
        return self._gather(ITEMS_STREAM, [row[0]])[0] if row else None

    def known_hashes(self, modality: str) -> set[str]:
        rows = self.conn.execute("SELECT content_hash FROM items WHERE modality = ?", (modality,))
        return {r[0] for r in rows}

    def add_image(self, path: str, content_hash: str, size: int, mtime_ns: int, vector: np.ndarray) -> int:
        slot = self._append(ITEMS_STREAM, vector)
        cur = self.conn.execute(
            "INSERT INTO items (modality, path, content_hash, size, mtime_ns, slot) VALUES ('image', ?, ?, ?, ?, ?)",
            (path_to_db(path), content_hash, size, mtime_ns, slot),
        )
        return int(cur.lastrowid)

    def add_images(
        self,
        paths: Sequence[str | None],
        content_hashes: Sequence[str],
        vectors: np.ndarray,
        ids: Sequence[int],
        captions: Sequence[str | None] | None = None,
    ) -> None:
        """Many image rows under given ids at once (imports): one shard append, one executemany. The rows
        carry no file stat (size, mtime 0: not read from files here); a caption goes in ``text``."""
        first = self._append(ITEMS_STREAM, vectors)
        rows = zip(
            [int(i) for i in ids],
            [path_to_db(p) if p is not None else None for p in paths],
            captions if captions is not None else [None] * len(paths),
            content_hashes,
            range(first, first + len(paths)),
            strict=True,
        )
        self.conn.executemany(
            "INSERT INTO items (id, modality, path, text, content_hash, size, mtime_ns, slot) "
            "VALUES (?, 'image', ?, ?, ?, 0, 0, ?)",
            rows,
        )

    def add_imported(self, ids: np.ndarray, vectors: np.ndarray, hash_prefix: str) -> None:
        """``add_images``' bulk twin for imported rows without paths or captions (an ``.npy`` import), the
        rows it would write with content hashes ``hash_prefix`` + id: one INSERT ... SELECT over a JSON
        array of the ids, the hashes made by SQLite, instead of a Python tuple and a bound statement per
        row (a third of the rows half of an import's CPU time at 10M rows). ``add_images`` is its oracle
        (tests/test_import_bulk.py); it is also the path where SQLite lacks json_each."""
        if not _has_json_each():
            count = len(ids)
            hashes = [f"{hash_prefix}{int(i)}" for i in ids]
            self.add_images([None] * count, hashes, vectors, ids)
            return
        first = self._append(ITEMS_STREAM, vectors)
        self.conn.execute(
            "INSERT INTO items (id, modality, path, text, content_hash, size, mtime_ns, slot) "
            "SELECT value, 'image', NULL, NULL, ? || value, 0, 0, ? + key FROM json_each(?)",
            (hash_prefix, first, json.dumps(np.asarray(ids, np.int64).tolist())),
        )

    # -- imports: rows under given ids, replaced in place (ingest/embeddings.py) ----------------
    def max_item_id(self) -> int:
        """The largest id the index has ever held (removed items' ids included: they are never reused)."""
        largest = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0]
        seq = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return max(int(largest), int(seq[0]) if seq else 0)

    def ids_exhausted(self) -> bool:
        """Whether SQLite's AUTOINCREMENT has handed out its last id (2**63 - 1): every later insert of a row
        without an id then fails with SQLITE_FULL, which is not a full disk."""
        return self.max_item_id() >= 2**63 - 1

    def built_ids_between(self, first: int, last: int, hash_prefix: str) -> int:
        """How many items with ids ``first``..``last`` were not imported (their content hash is not
        ``hash_prefix`` + id): ids an interrupted import may not take up again."""
        sql = "SELECT COUNT(*) FROM items WHERE id BETWEEN ? AND ? AND content_hash != ? || id"
        return int(self.conn.execute(sql, (first, last, hash_prefix)).fetchone()[0])

    def content_hashes_for(self, ids: Sequence[int]) -> dict[int, str]:
        """Content hashes of those of ``ids`` that are stored (any number of them: queried in chunks)."""
        found: dict[int, str] = {}
        wanted = [int(i) for i in ids]
        for first in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[first : first + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(self.conn.execute(f"SELECT id, content_hash FROM items WHERE id IN ({marks})", chunk))
        return found

    def ids_of_paths(self, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(id, content hash) of the stored images among ``paths``."""
        found: dict[str, tuple[int, str]] = {}
        wanted = [path_to_db(p) for p in paths]
        for first in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[first : first + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT path, id, content_hash FROM items WHERE modality = 'image' AND path IN ({marks})"
            found.update((path_from_db(r[0]), (r[1], r[2])) for r in self.conn.execute(sql, chunk))
        return found

    def stored_rows(self, ids: Sequence[int]) -> dict[int, tuple[str, str | None, str | None, str | None]]:
        """(modality, path, text, external id) of those of ``ids`` that are stored."""
        found = {}
        wanted = [int(i) for i in ids]
        for first in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[first : first + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = f"SELECT id, modality, path, text, external_id FROM items WHERE id IN ({marks})"
            found.update((r[0], (r[1], path_from_db(r[2]), r[3], r[4])) for r in self.conn.execute(sql, chunk))
        return found

    def add_imported_rows(
        self,
        ids: Sequence[int],
        vectors: np.ndarray,
        content_hashes: Sequence[str],
        modalities: Sequence[str],
        paths: Sequence[str | None],
        texts: Sequence[str | None],
        external_ids: Sequence[str | None],
    ) -> None:
        """Rows of either modality under given ids (an import's rows with metadata): one shard append, one
        executemany. The rows carry no file stat (size, mtime 0: not read from files here)."""
        first = self._append(ITEMS_STREAM, vectors)
        rows = zip(
            [int(i) for i in ids],
            modalities,
            [path_to_db(p) if p is not None else None for p in paths],
            texts,
            external_ids,
            content_hashes,
            range(first, first + len(ids)),
            strict=True,
        )
        self.conn.executemany(
            "INSERT INTO items (id, modality, path, text, external_id, content_hash, size, mtime_ns, slot) "
            "VALUES (?, ?, ?, ?, ?, ?, 0, 0, ?)",
            rows,
        )

    def replace_imported_rows(
        self,
        ids: Sequence[int],
        vectors: np.ndarray,
        modalities: Sequence[str],
        paths: Sequence[str | None],
        texts: Sequence[str | None],
        external_ids: Sequence[str | None],
        new_vectors: Sequence[bool],
    ) -> None:
        """Stored rows given new metadata and, where ``new_vectors``, a new vector (appended; the old one is a
        dead shard row) whose derived vectors are dropped with the old one."""
        changed = [j for j, flag in enumerate(new_vectors) if flag]
        slots: dict[int, int] = {}
        if changed:
            first = self._append(ITEMS_STREAM, np.asarray(vectors)[changed])
            slots = {int(ids[j]): first + n for n, j in enumerate(changed)}
            self.conn.executemany("DELETE FROM derived_vectors WHERE item_id = ?", [(int(ids[j]),) for j in changed])
        self.conn.executemany(
            "UPDATE items SET modality = ?, path = ?, text = ?, external_id = ?, slot = COALESCE(?, slot) WHERE id = ?",
            [
                (m, path_to_db(p) if p is not None else None, t, e, slots.get(int(i)), int(i))
                for i, m, p, t, e in zip(ids, modalities, paths, texts, external_ids, strict=True)
            ],
        )

    def update_stat(self, item_id: int, size: int, mtime_ns: int) -> None:
        self.conn.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, item_id))

    def replace_image(self, item_id: int, content_hash: str, size: int, mtime_ns: int, vector: np.ndarray) -> None:
        """An edited file: the item keeps its id, path and caption; its vector (a new slot), hash and stat are
        replaced, and what was derived from the old vector (gallery inversions) is deleted, to be made again."""
        slot = self._append(ITEMS_STREAM, vector)
        self.conn.execute(
            "UPDATE items SET content_hash = ?, size = ?, mtime_ns = ?, slot = ? WHERE id = ?",
            (content_hash, size, mtime_ns, slot, int(item_id)),
        )
        self.conn.execute("DELETE FROM derived_vectors WHERE item_id = ?", (int(item_id),))

    def move_image(self, item_id: int, path: str, size: int, mtime_ns: int) -> None:
        """A moved or renamed file with the same content: the item keeps its id and vector under the new path."""
        self.conn.execute(
            "UPDATE items SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
            (path_to_db(path), size, mtime_ns, int(item_id)),
        )

    def adopt_file(self, item_id: int, size: int, mtime_ns: int) -> None:
        """An imported row's file, seen by a build: its stat is recorded (its content hash, the import's, and
        its vector stay), so later builds see it unchanged, and a change to the file from then on is an edit."""
        self.conn.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, int(item_id)))

    # -- files a build could not use ---------------------------------------------------------
    def failed_files(self) -> dict[str, tuple[int, int, str, str]]:
        """path -> (size, mtime_ns, limits, reason) of files that failed to decode at that stat."""
        if "failed_files" not in self._tables():  # a read-only catalog older than the table
            return {}
        rows = self.conn.execute("SELECT path, size, mtime_ns, limits, reason FROM failed_files")
        return {path_from_db(r[0]): tuple(r[1:]) for r in rows}

    def record_failures(self, failures: Iterable[tuple[str, int, int, str, str]]) -> None:
        """Remember (path, size, mtime_ns, limits, reason) of files that failed (committed by the caller)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO failed_files (path, size, mtime_ns, limits, reason) VALUES (?, ?, ?, ?, ?)",
            [(path_to_db(p), *rest) for p, *rest in failures],
        )

    def forget_failures(self, paths: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM failed_files WHERE path = ?", [(path_to_db(p),) for p in paths])

    def add_text(self, text: str, content_hash: str, external_id: str | None, vector: np.ndarray) -> int:
        slot = self._append(ITEMS_STREAM, vector)
        cur = self.conn.execute(
            "INSERT INTO items (modality, text, external_id, content_hash, slot) VALUES ('text', ?, ?, ?, ?)",
            (text, external_id, content_hash, slot),
        )
        return int(cur.lastrowid)

    def remove(self, ids: Iterable[int]) -> None:
        """Delete rows (their shard rows stay, as dead bytes: shards are append-only)."""
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
        rows = self.conn.execute(
            f"SELECT id, {self._col} FROM items WHERE modality = ? ORDER BY id", (modality,)
        ).fetchall()
        return self._stack(ITEMS_STREAM, rows, dim)

    def vectors_for(self, ids: Sequence[int], dim: int, kind: str | None = None) -> np.ndarray:
        """Vectors of ``ids`` in the given order (for exact re-ranking of candidates): the items' own,
        or with ``kind`` their derived vectors. Every id must have a row (StoreError names one that has not)."""
        if len(ids) == 0:
            return np.zeros((0, dim), np.float32)
        mask, vectors = self.vectors_found(ids, dim, kind)
        if not mask.all():
            raise StoreError(f"{self.path}: item {int(np.asarray(ids)[~mask][0])} has no row (removed meanwhile?)")
        return vectors

    def vectors_found(self, ids: Sequence[int], dim: int, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mask of ``ids`` that still have a row, their vectors in order): ``vectors_for`` for a reader whose
        candidates come from FAISS files of an earlier generation, where another process may have removed some."""
        wanted = [int(i) for i in ids]
        found: dict[int, object] = {}
        for first in range(0, len(wanted), _ID_CHUNK):
            chunk = wanted[first : first + _ID_CHUNK]
            marks = ",".join("?" * len(chunk))
            if kind is None:
                sql, params = f"SELECT id, {self._col} FROM items WHERE id IN ({marks})", chunk
            else:
                sql = f"SELECT item_id, {self._col} FROM derived_vectors WHERE kind = ? AND item_id IN ({marks})"
                params = [kind, *chunk]
            found.update(self.conn.execute(sql, params))
        mask = np.fromiter((i in found for i in wanted), bool, count=len(wanted))
        return mask, self._gather(kind or ITEMS_STREAM, [found[i] for i in wanted if i in found], dim)

    # -- vectors derived from items (e.g. each gallery image's OTI feature) ---------------
    def set_derived(self, kind: str, item_ids: Sequence[int], vectors: np.ndarray) -> None:
        if len(item_ids) == 0:
            return
        first = self._append(kind, vectors)
        self.conn.executemany(
            "INSERT OR REPLACE INTO derived_vectors (kind, item_id, slot) VALUES (?, ?, ?)",
            [(kind, int(i), first + n) for n, i in enumerate(item_ids)],
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
            f"SELECT item_id, {self._col} FROM derived_vectors WHERE kind = ? ORDER BY item_id", (kind,)
        ).fetchall()
        return self._stack(kind, rows, dim)

    def vector_chunks(self, name: str, derived: bool, dim: int, size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids, vectors) of a modality's items (or, ``derived``, of one kind of derived vector) in id order,
        ``size`` rows at a time: keyset pagination, so memory stays at one chunk whatever the index size."""
        col = self._col
        if derived:
            sql = f"SELECT item_id, {col} FROM derived_vectors WHERE kind = ? AND item_id > ? ORDER BY item_id LIMIT ?"
        else:
            sql = f"SELECT id, {col} FROM items WHERE modality = ? AND id > ? ORDER BY id LIMIT ?"
        stream = name if derived else ITEMS_STREAM
        last = -1

        def next_chunk() -> tuple[list, tuple[np.ndarray, np.ndarray] | None]:
            rows = self.conn.execute(sql, (name, last, size)).fetchall()
            return rows, (self._stack(stream, rows, dim) if rows else None)

        while True:
            rows, chunk = read_again_if_moved(next_chunk)  # a compaction elsewhere may move rows after the query
            if not rows:
                return
            yield chunk
            last = rows[-1][0]

    def derived_for(self, kind: str, ids: Sequence[int]) -> dict[int, np.ndarray]:
        """The ``kind`` vectors of those of ``ids`` that have one (exports of partly inverted galleries)."""
        if len(ids) == 0:
            return {}
        marks = ",".join("?" * len(ids))
        sql = f"SELECT item_id, {self._col} FROM derived_vectors WHERE kind = ? AND item_id IN ({marks})"
        rows = self.conn.execute(sql, [kind, *(int(i) for i in ids)]).fetchall()
        vectors = self._gather(kind, [r[1] for r in rows])
        return {r[0]: v for r, v in zip(rows, vectors, strict=True)}

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

    # -- migration from schema 1 (vectors as BLOBs in the rows) ----------------------------
    def migrate_to_shards(self, dim: int, dtype: str = DEFAULT_DTYPE) -> int:
        """Move an old catalog's vectors into shards, once (the caller holds the writer lock). Shards are
        written and fsynced first, then one SQLite transaction swaps the tables; a crash before it leaves
        the old catalog as it was (and the next try starts the shards over). The generation is kept: the
        FAISS files hold the same ids and vectors and stay valid. Returns how many vectors moved."""
        self.conn.commit()
        self.legacy = "vector" in self._columns("items")
        if not self.legacy:
            return 0  # another process migrated it meanwhile
        shutil.rmtree(self.vectors_dir, ignore_errors=True)  # an interrupted migration's shards: unreferenced
        shards = ShardStore(self.vectors_dir, dim, dtype)
        committed: dict[tuple[str, int], tuple[int, int]] = {}
        records: dict[tuple[str, int], ShardRecord] = {}
        moved = 0
        kinds = [r[0] for r in self.conn.execute("SELECT DISTINCT kind FROM derived_vectors ORDER BY kind")]
        derived_sql = (
            "SELECT item_id, vector FROM derived_vectors WHERE kind = ? AND item_id > ? ORDER BY item_id LIMIT ?"
        )
        sources = [(ITEMS_STREAM, "SELECT id, vector FROM items WHERE id > ? ORDER BY id LIMIT ?", ())]
        sources += [(kind, derived_sql, (kind,)) for kind in kinds]
        for stream, sql, params in sources:
            last, count = -1, 0
            while rows := self.conn.execute(sql, (*params, last, MIGRATE_CHUNK)).fetchall():
                blobs = [r[1] for r in rows]
                if any(len(b) != 4 * dim for b in blobs):
                    raise StoreError(f"{self.path}: holds vectors that are not {dim}-d; the catalog is damaged")
                shards.append(stream, np.frombuffer(b"".join(blobs), np.float32).reshape(-1, dim), count)
                for record in shards.flush(committed):
                    records[(record.stream, record.number)] = record
                count += len(rows)
                last = rows[-1][0]
            moved += count
        self._swap_tables(list(records.values()), dim, dtype)
        self.legacy = False
        self._shards = None
        return moved

    def _swap_tables(self, records: list[ShardRecord], dim: int, dtype: str) -> None:
        """One transaction: tables with slots (slot = rank in id order per stream, the order the shards
        were written in) replace the tables with BLOBs; then VACUUM gives the BLOBs' space back."""
        conn = self.conn
        conn.execute("PRAGMA foreign_keys = OFF")  # dropping the old items table must not cascade
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            conn.execute(_ITEMS_TABLE.format(name="items_v2"))
            conn.execute(
                "INSERT INTO items_v2 (id, modality, path, text, external_id, content_hash, size, mtime_ns, slot) "
                "SELECT id, modality, path, text, external_id, content_hash, size, mtime_ns, "
                "ROW_NUMBER() OVER (ORDER BY id) - 1 FROM items"
            )
            conn.execute(_DERIVED_TABLE.format(name="derived_v2"))
            conn.execute(
                "INSERT INTO derived_v2 (kind, item_id, slot) "
                "SELECT kind, item_id, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY item_id) - 1 FROM derived_vectors"
            )
            conn.execute("DROP TABLE derived_vectors")
            conn.execute("DROP TABLE items")
            conn.execute("ALTER TABLE items_v2 RENAME TO items")
            conn.execute("ALTER TABLE derived_v2 RENAME TO derived_vectors")
            for sql in _ITEM_INDEXES:
                conn.execute(sql)
            conn.execute("DELETE FROM sqlite_sequence WHERE name IN ('items', 'items_v2')")
            if seq is not None:  # ids of removed items are never handed out again
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('items', ?)", (seq[0],))
            conn.execute("DELETE FROM shards")
            conn.executemany(
                "INSERT INTO shards (stream, number, rows, crc32) VALUES (?, ?, ?, ?)",
                [(r.stream, r.number, r.rows, r.crc32) for r in records],
            )
            for key, value in (
                ("schema_version", CATALOG_SCHEMA_VERSION),
                ("vector_dim", dim),
                ("vector_dtype", dtype),
            ):
                self.set_meta(key, str(value))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("VACUUM")


@functools.cache
def _has_json_each() -> bool:
    """Whether this SQLite has the JSON functions (built in since 3.38; an older build may omit them)."""
    try:
        sqlite3.connect(":memory:").execute("SELECT count(*) FROM json_each('[1]')").close()
    except sqlite3.OperationalError:
        return False
    return True


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
