"""SQLite catalog: what an index holds, and where each vector lives.

Every item (image file or text) has a stable int64 id, its content hash, file stat and its vector's
*slot* in the append-only shard files under ``vectors/`` (store/shards.py); the catalog's ``shards``
table records each shard's committed rows and crc32, in the same transaction as the rows that point
into it. The source of truth is the catalog's rows plus the shard bytes they point at, verified against
those records. FAISS indexes are derived from it and can always be rebuilt from it, so a crash between
a catalog commit and a FAISS save loses nothing.

Every statement on the catalog file lives in this module and its parts, as named methods of ``Catalog``:
the schema and the checks on the file (catalog_schema.py), image files as builds see them
(catalog_files.py), an import's rows (catalog_imports.py), slots and shard records (catalog_shards.py), and
schema 1, whose vectors were BLOBs in the rows, behind one read-only adapter that also migrates it once
(catalog_legacy.py).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.store.catalog_files import ImageFiles
from crossgap_index.store.catalog_files import ImageRecord as ImageRecord  # imported from here by callers
from crossgap_index.store.catalog_imports import ImportedRows
from crossgap_index.store.catalog_legacy import LegacyMigration, LegacyVectors
from crossgap_index.store.catalog_schema import (
    CATALOG_SCHEMA_VERSION,
    COMMON_TABLES,
    DEFAULT_DTYPE,
    DERIVED_TABLE,
    INSERT_SHARD,
    ITEM_INDEXES,
    ITEMS_TABLE,
    check_header,
    chunked,
    header_shortfall,
    path_from_db,
    wal_has_frames,
)
from crossgap_index.store.catalog_schema import has_json_each as _has_json_each
from crossgap_index.store.catalog_schema import path_to_db as path_to_db  # imported from here by callers
from crossgap_index.store.catalog_shards import ShardBookkeeping, ShardVectors
from crossgap_index.store.shards import (
    ITEMS_STREAM,
    SHARD_ROWS,
    VECTORS_DIR,
    ShardRecord,
    ShardStore,
    read_again_if_moved,
)


@dataclass(frozen=True)
class ItemRow:
    """What a search hit needs to know about a stored item."""

    id: int
    modality: str
    path: str | None
    text: str | None
    external_id: str | None


class Catalog(ImageFiles, ImportedRows, ShardBookkeeping, LegacyMigration):
    """Thin typed wrapper over one SQLite file, with one connection per thread, and the shard files
    its rows point into.

    Each thread reads through its own connection (WAL: readers see committed data and never block);
    the writing thread sees its own uncommitted rows (and their vectors, queued until ``commit``).
    ``readonly`` opens the file read-only (an index directory that cannot be written: no -wal/-shm can
    be made there either, so it is opened immutable). Where vectors live (shards, or an old catalog's
    BLOBs) is the business of one vector layout, ``ShardVectors`` or ``LegacyVectors``.
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
                for sql in COMMON_TABLES:
                    self.conn.execute(sql)
                self.conn.commit()
            self._detect_layout()
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
        self.conn.execute(ITEMS_TABLE.format(name="items"))
        for sql in ITEM_INDEXES:
            self.conn.execute(sql)
        self.conn.execute(DERIVED_TABLE.format(name="derived_vectors"))

    def _detect_layout(self) -> None:
        self._layout = LegacyVectors(self) if "vector" in self._columns("items") else ShardVectors(self)

    @property
    def legacy(self) -> bool:
        """Whether this is a schema-1 catalog (vectors as BLOBs in its rows), read as it is until migrated."""
        return isinstance(self._layout, LegacyVectors)

    def uses_shards(self) -> bool:
        """Whether vectors live in shard files here with their format recorded (not an old catalog, nor an
        empty one): what compaction, shard checks and leftover cleanup work on."""
        return self._layout.uses_shards()

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

    def delete_meta(self, key: str) -> None:
        self.conn.execute("DELETE FROM meta WHERE key = ?", (key,))

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
        return self._layout.dtype()

    def stored_dim(self) -> int | None:
        """Width of the stored vectors (None: nothing says yet)."""
        return self._layout.stored_dim()

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
        return self._layout.shard_records()

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
        self._layout.check_writable()
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
        self.conn.executemany(INSERT_SHARD, [(r.stream, r.number, r.rows, r.crc32) for r in records])

    @property
    def _col(self) -> str:
        return self._layout.column

    def _gather(self, stream: str, refs: Sequence, dim: int | None = None) -> np.ndarray:
        """Vectors of ``refs`` (slots; BLOBs in an old catalog) in their order, as float32."""
        return self._layout.gather(stream, refs, dim)

    def select_in(self, sql: str, values: Sequence, before: Sequence = ()) -> Iterator[tuple]:
        """Rows of ``sql``, whose ``IN ({marks})`` takes ``values`` (any number of them: queried in chunks
        under SQLite's limit on bound parameters); ``before`` binds the parameters ahead of them."""
        for chunk, marks in chunked(values):
            yield from self.conn.execute(sql.format(marks=marks), [*before, *chunk])

    def _stack(self, stream: str, rows: list[tuple[int, object]], dim: int) -> tuple[np.ndarray, np.ndarray]:
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float32)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        return ids, self._gather(stream, [r[1] for r in rows], dim)

    # -- items --------------------------------------------------------------------------
    def count(self, modality: str) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0]

    def vector_by_hash(self, content_hash: str) -> np.ndarray | None:
        row = self.conn.execute(
            f"SELECT {self._col} FROM items WHERE content_hash = ? LIMIT 1", (content_hash,)
        ).fetchone()
        return self._gather(ITEMS_STREAM, [row[0]])[0] if row else None

    def known_hashes(self, modality: str) -> set[str]:
        rows = self.conn.execute("SELECT content_hash FROM items WHERE modality = ?", (modality,))
        return {r[0] for r in rows}

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
        count = len(paths)
        texts = captions if captions is not None else [None] * count
        self.add_imported_rows(ids, vectors, content_hashes, ["image"] * count, paths, texts, [None] * count)

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
        cur = self.select_in(
            "SELECT id, modality, path, text, external_id FROM items WHERE id IN ({marks})", [int(i) for i in ids]
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
        if kind is None:
            found = dict(self.select_in(f"SELECT id, {self._col} FROM items WHERE id IN ({{marks}})", wanted))
        else:
            sql = f"SELECT item_id, {self._col} FROM derived_vectors WHERE kind = ? AND item_id IN ({{marks}})"
            found = dict(self.select_in(sql, wanted, (kind,)))
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
        found = self.content_hashes_for(wanted)
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
        sql = f"SELECT item_id, {self._col} FROM derived_vectors WHERE kind = ? AND item_id IN ({{marks}})"
        rows = list(self.select_in(sql, [int(i) for i in ids], (kind,)))
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
