"""Where schema 2 keeps vectors (a part of ``Catalog``): each row's slot in its stream's shard files, the
shards' committed records, and the bookkeeping compaction and shard recovery do on them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from crossgap_index.store.catalog_schema import DEFAULT_DTYPE, INSERT_SHARD
from crossgap_index.store.shards import ITEMS_STREAM, ShardRecord

if TYPE_CHECKING:
    from crossgap_index.store.catalog import Catalog


class ShardVectors:
    """Schema 2's vectors: a row's ``slot`` locates its vector in its stream's shard files."""

    column = "slot"

    def __init__(self, catalog: Catalog):
        self._catalog = catalog

    def dtype(self) -> str:
        return self._catalog.get_meta("vector_dtype") or DEFAULT_DTYPE

    def stored_dim(self) -> int | None:
        dim = self._catalog.get_meta("vector_dim")
        return int(dim) if dim is not None else None

    def shard_records(self) -> list[ShardRecord]:
        rows = self._catalog.conn.execute("SELECT stream, number, rows, crc32 FROM shards ORDER BY stream, number")
        return [ShardRecord(*r) for r in rows]

    def uses_shards(self) -> bool:
        return self._catalog.get_meta("vector_dim") is not None

    def gather(self, stream: str, refs: Sequence, dim: int | None) -> np.ndarray:
        if not refs:
            return np.zeros((0, dim if dim is not None else (self.stored_dim() or 0)), np.float32)
        return self._catalog.shards().gather(stream, np.fromiter(refs, np.int64, count=len(refs)))

    def check_writable(self) -> None:
        """Shards are always written."""


class ShardBookkeeping:
    """Rows by slot and shard records: what store/compact.py and store/recover.py change."""

    def rows_in_slots(self: Catalog, stream: str, first: int, stop: int) -> list[tuple[int, int, str]]:
        """(id, slot, modality or kind) of the rows whose vectors lie in ``stream``'s slots first..stop-1, in
        slot order: the live rows of one shard."""
        if stream == ITEMS_STREAM:
            sql, params = "SELECT id, slot, modality FROM items WHERE slot >= ? AND slot < ? ORDER BY slot", ()
        else:
            sql = "SELECT item_id, slot, kind FROM derived_vectors WHERE kind = ? AND slot >= ? AND slot < ? "
            sql += "ORDER BY slot"
            params = (stream,)
        return self.conn.execute(sql, (*params, first, stop)).fetchall()

    def live_rows_per_shard(self: Catalog, shard_rows: int) -> dict[tuple[str, int], int]:
        """(stream, shard number) -> how many rows point into it, for shards of ``shard_rows`` rows."""
        live = {
            (ITEMS_STREAM, n): c
            for n, c in self.conn.execute("SELECT slot / ?, COUNT(*) FROM items GROUP BY 1", (shard_rows,))
        }
        sql = "SELECT kind, slot / ?, COUNT(*) FROM derived_vectors GROUP BY 1, 2"
        live.update(((k, n), c) for k, n, c in self.conn.execute(sql, (shard_rows,)))
        return live

    def move_slots(self: Catalog, stream: str, ids: Sequence[int], slots: Sequence[int]) -> None:
        """Point rows of ``stream`` at new slots (a compaction's copies; committed by the caller)."""
        pairs = zip(slots, ids, strict=True)
        if stream == ITEMS_STREAM:
            self.conn.executemany("UPDATE items SET slot = ? WHERE id = ?", pairs)
        else:
            sql = "UPDATE derived_vectors SET slot = ? WHERE kind = ? AND item_id = ?"
            self.conn.executemany(sql, ((s, stream, i) for s, i in pairs))

    def replace_shard_records(self: Catalog, removed: Iterable[ShardRecord], written: Iterable[ShardRecord]) -> None:
        """Drop the records of ``removed`` shards and add ``written`` ones (committed by the caller)."""
        self.conn.executemany(
            "DELETE FROM shards WHERE stream = ? AND number = ?", [(r.stream, r.number) for r in removed]
        )
        self.conn.executemany(INSERT_SHARD, [(r.stream, r.number, r.rows, r.crc32) for r in written])

    def set_shard_checksum(self: Catalog, record: ShardRecord, crc32: int) -> None:
        """A rewritten shard's checksum (committed by the caller)."""
        sql = "UPDATE shards SET crc32 = ? WHERE stream = ? AND number = ?"
        self.conn.execute(sql, (crc32, record.stream, record.number))
