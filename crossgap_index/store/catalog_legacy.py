"""Catalog schema 1, behind one read-only adapter: each vector a float32 BLOB in its row, no shards.

Such a catalog (one whose vectors are not in shards) is served as it is where it cannot be written
(a read-only mount) and migrated once, under the writer lock, on the first writable open. The catalog
holds one vector layout, this adapter or the shards' (store/catalog.py), and asks it for what differs,
so no other code asks which schema it reads.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.store.catalog_schema import (
    CATALOG_SCHEMA_VERSION,
    DEFAULT_DTYPE,
    DERIVED_TABLE,
    INSERT_SHARD,
    ITEM_INDEXES,
    ITEMS_TABLE,
)
from crossgap_index.store.shards import ITEMS_STREAM, ShardRecord, ShardStore

if TYPE_CHECKING:
    from crossgap_index.store.catalog import Catalog

log = logging.getLogger("crossgap_index")
MIGRATE_CHUNK = 16_384  # rows per read while moving an old catalog's vectors into shards


class LegacyVectors:
    """Schema 1's vectors, read-only: a row's ``vector`` column is the float32 vector itself."""

    column = "vector"

    def __init__(self, catalog: Catalog):
        self._catalog = catalog

    def dtype(self) -> str:
        return "float32"

    def stored_dim(self) -> int | None:
        row = self._catalog.conn.execute("SELECT length(vector) FROM items LIMIT 1").fetchone()
        return row[0] // 4 if row else None

    def shard_records(self) -> list[ShardRecord]:
        return []

    def uses_shards(self) -> bool:
        return False

    def gather(self, stream: str, refs: Sequence, dim: int | None) -> np.ndarray:
        if not refs:
            return np.zeros((0, dim or 0), np.float32)
        return np.frombuffer(b"".join(refs), dtype=np.float32).reshape(len(refs), -1)

    def check_writable(self) -> None:
        raise StoreError(f"{self._catalog.path}: an old catalog (vectors inside it) is written only after migrating")


class LegacyMigration:
    """The one-time move of a schema-1 catalog's vectors into shards (a part of ``Catalog``)."""

    def migrate_if_old(self: Catalog, dim: int, hold: Callable[[], AbstractContextManager]) -> int:
        """On a writable open: move an old catalog's vectors into shards while ``hold()`` holds the writer
        lock (once; another process may have done it meanwhile). Returns how many vectors moved."""
        if self.readonly or not self.legacy:
            return 0
        with hold():
            count = self.count("image") + self.count("text")
            log.warning("cgx: moving the %d vectors of %s into vector shards (once) ...", count, self.path.parent)
            return self.migrate_to_shards(dim)

    def migrate_to_shards(self: Catalog, dim: int, dtype: str = DEFAULT_DTYPE) -> int:
        """Move an old catalog's vectors into shards, once (the caller holds the writer lock). Shards are
        written and fsynced first, then one SQLite transaction swaps the tables; a crash before it leaves
        the old catalog as it was (and the next try starts the shards over). The generation is kept: the
        FAISS files hold the same ids and vectors and stay valid. Returns how many vectors moved."""
        self.conn.commit()
        self._detect_layout()
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
        self._detect_layout()
        self._shards = None
        return moved

    def _swap_tables(self: Catalog, records: list[ShardRecord], dim: int, dtype: str) -> None:
        """One transaction: tables with slots (slot = rank in id order per stream, the order the shards
        were written in) replace the tables with BLOBs; then VACUUM gives the BLOBs' space back."""
        conn = self.conn
        conn.execute("PRAGMA foreign_keys = OFF")  # dropping the old items table must not cascade
        try:
            conn.execute("BEGIN IMMEDIATE")
            seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
            conn.execute(ITEMS_TABLE.format(name="items_v2"))
            conn.execute(
                "INSERT INTO items_v2 (id, modality, path, text, external_id, content_hash, size, mtime_ns, slot) "
                "SELECT id, modality, path, text, external_id, content_hash, size, mtime_ns, "
                "ROW_NUMBER() OVER (ORDER BY id) - 1 FROM items"
            )
            conn.execute(DERIVED_TABLE.format(name="derived_v2"))
            conn.execute(
                "INSERT INTO derived_v2 (kind, item_id, slot) "
                "SELECT kind, item_id, ROW_NUMBER() OVER (PARTITION BY kind ORDER BY item_id) - 1 FROM derived_vectors"
            )
            conn.execute("DROP TABLE derived_vectors")
            conn.execute("DROP TABLE items")
            conn.execute("ALTER TABLE items_v2 RENAME TO items")
            conn.execute("ALTER TABLE derived_v2 RENAME TO derived_vectors")
            for sql in ITEM_INDEXES:
                conn.execute(sql)
            conn.execute("DELETE FROM sqlite_sequence WHERE name IN ('items', 'items_v2')")
            if seq is not None:  # ids of removed items are never handed out again
                conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('items', ?)", (seq[0],))
            conn.execute("DELETE FROM shards")
            conn.executemany(INSERT_SHARD, [(r.stream, r.number, r.rows, r.crc32) for r in records])
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
