"""Image files as a build sees them (a part of ``Catalog``): each file's row, stat and content hash,
edits, moves and the files that could not be used.

A build compares these against the folder it walks: an unchanged file is not read again, a changed one
keeps its id and gets a new vector, a moved one keeps its id and vector under its new path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.store.catalog_schema import path_from_db, path_to_db
from crossgap_index.store.shards import ITEMS_STREAM

if TYPE_CHECKING:
    from crossgap_index.store.catalog import Catalog


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    content_hash: str
    size: int
    mtime_ns: int


class ImageFiles:
    """Rows of image files, keyed by path, with the stat they were read at."""

    def images(self: Catalog) -> dict[str, ImageRecord]:
        """Every stored image file keyed by its absolute path (imported rows without a path are not files)."""
        rows = self.conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns FROM items WHERE modality = 'image' AND path IS NOT NULL"
        )
        records = (ImageRecord(r[0], path_from_db(r[1]), *r[2:]) for r in rows)
        return {r.path: r for r in records}

    def image_record(self: Catalog, item_id: int) -> ImageRecord | None:
        """One image's file as indexed (path, content hash, size, mtime), or None."""
        row = self.conn.execute(
            "SELECT id, path, content_hash, size, mtime_ns FROM items WHERE id = ? AND modality = 'image'",
            (int(item_id),),
        ).fetchone()
        return ImageRecord(row[0], path_from_db(row[1]), *row[2:]) if row else None

    def add_image(self: Catalog, path: str, content_hash: str, size: int, mtime_ns: int, vector: np.ndarray) -> int:
        slot = self._append(ITEMS_STREAM, vector)
        cur = self.conn.execute(
            "INSERT INTO items (modality, path, content_hash, size, mtime_ns, slot) VALUES ('image', ?, ?, ?, ?, ?)",
            (path_to_db(path), content_hash, size, mtime_ns, slot),
        )
        return int(cur.lastrowid)

    def update_stat(self: Catalog, item_id: int, size: int, mtime_ns: int) -> None:
        self.conn.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, item_id))

    def replace_image(
        self: Catalog, item_id: int, content_hash: str, size: int, mtime_ns: int, vector: np.ndarray
    ) -> None:
        """An edited file: the item keeps its id, path and caption; its vector (a new slot), hash and stat are
        replaced, and what was derived from the old vector (gallery inversions) is deleted, to be made again."""
        slot = self._append(ITEMS_STREAM, vector)
        self.conn.execute(
            "UPDATE items SET content_hash = ?, size = ?, mtime_ns = ?, slot = ? WHERE id = ?",
            (content_hash, size, mtime_ns, slot, int(item_id)),
        )
        self.conn.execute("DELETE FROM derived_vectors WHERE item_id = ?", (int(item_id),))

    def move_image(self: Catalog, item_id: int, path: str, size: int, mtime_ns: int) -> None:
        """A moved or renamed file with the same content: the item keeps its id and vector under the new path."""
        self.conn.execute(
            "UPDATE items SET path = ?, size = ?, mtime_ns = ? WHERE id = ?",
            (path_to_db(path), size, mtime_ns, int(item_id)),
        )

    def adopt_file(self: Catalog, item_id: int, size: int, mtime_ns: int) -> None:
        """An imported row's file, seen by a build: its stat is recorded (its content hash, the import's, and
        its vector stay), so later builds see it unchanged, and a change to the file from then on is an edit."""
        self.conn.execute("UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, int(item_id)))

    def failed_files(self: Catalog) -> dict[str, tuple[int, int, str, str]]:
        """path -> (size, mtime_ns, limits, reason) of files that failed to decode at that stat."""
        if "failed_files" not in self._tables():  # a read-only catalog older than the table
            return {}
        rows = self.conn.execute("SELECT path, size, mtime_ns, limits, reason FROM failed_files")
        return {path_from_db(r[0]): tuple(r[1:]) for r in rows}

    def record_failures(self: Catalog, failures: Iterable[tuple[str, int, int, str, str]]) -> None:
        """Remember (path, size, mtime_ns, limits, reason) of files that failed (committed by the caller)."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO failed_files (path, size, mtime_ns, limits, reason) VALUES (?, ?, ?, ?, ?)",
            [(path_to_db(p), *rest) for p, *rest in failures],
        )

    def forget_failures(self: Catalog, paths: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM failed_files WHERE path = ?", [(path_to_db(p),) for p in paths])
