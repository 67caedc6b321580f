"""Imported rows (`cgx import`): rows under given ids, found and replaced in place (a part of ``Catalog``).

An import names its own ids, so unlike a build it asks which of them are stored, what they hold, and
whether an interrupted import's ids are still free; ingest/embeddings.py reads the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.store.catalog_schema import optional_path_to_db, path_from_db, path_to_db
from crossgap_index.store.shards import ITEMS_STREAM

if TYPE_CHECKING:
    from crossgap_index.store.catalog import Catalog


class ImportedRows:
    """Rows under given ids, of either modality, with the metadata an import carries."""

    def max_item_id(self: Catalog) -> int:
        """The largest id the index has ever held (removed items' ids included: they are never reused)."""
        largest = self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()[0]
        seq = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'items'").fetchone()
        return max(int(largest), int(seq[0]) if seq else 0)

    def ids_exhausted(self: Catalog) -> bool:
        """Whether SQLite's AUTOINCREMENT has handed out its last id (2**63 - 1): every later insert of a row
        without an id then fails with SQLITE_FULL, which is not a full disk."""
        return self.max_item_id() >= 2**63 - 1

    def built_ids_between(self: Catalog, first: int, last: int, hash_prefix: str) -> int:
        """How many items with ids ``first``..``last`` were not imported (their content hash is not
        ``hash_prefix`` + id): ids an interrupted import may not take up again."""
        sql = "SELECT COUNT(*) FROM items WHERE id BETWEEN ? AND ? AND content_hash != ? || id"
        return int(self.conn.execute(sql, (first, last, hash_prefix)).fetchone()[0])

    def content_hashes_for(self: Catalog, ids: Sequence[int]) -> dict[int, str]:
        """Content hashes of those of ``ids`` that are stored (any number of them: queried in chunks)."""
        return dict(self.select_in("SELECT id, content_hash FROM items WHERE id IN ({marks})", [int(i) for i in ids]))

    def ids_of_paths(self: Catalog, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(id, content hash) of the stored images among ``paths``."""
        sql = "SELECT path, id, content_hash FROM items WHERE modality = 'image' AND path IN ({marks})"
        return {path_from_db(r[0]): (r[1], r[2]) for r in self.select_in(sql, [path_to_db(p) for p in paths])}

    def stored_rows(self: Catalog, ids: Sequence[int]) -> dict[int, tuple[str, str | None, str | None, str | None]]:
        """(modality, path, text, external id) of those of ``ids`` that are stored."""
        sql = "SELECT id, modality, path, text, external_id FROM items WHERE id IN ({marks})"
        return {r[0]: (r[1], path_from_db(r[2]), r[3], r[4]) for r in self.select_in(sql, [int(i) for i in ids])}

    def add_imported_rows(
        self: Catalog,
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
            [optional_path_to_db(p) for p in paths],
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
        self: Catalog,
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
                (m, optional_path_to_db(p), t, e, slots.get(int(i)), int(i))
                for i, m, p, t, e in zip(ids, modalities, paths, texts, external_ids, strict=True)
            ],
        )
