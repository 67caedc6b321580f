"""Compaction: give back the bytes of removed items' rows, which append-only shards otherwise keep forever.

Shards whose dead fraction (rows no catalog row points at, over the shard's committed rows) is at least
``min_dead`` have their live rows copied, bytes as stored, into new shard files numbered after the
stream's highest shard (written beside, fsynced, each with its crc32). Then ONE catalog transaction
points the rows at their new slots, drops the old shards' records and records the new ones; only then
are the old files deleted. So at every instant the committed catalog points at whole, verified bytes:

- killed while writing or before the commit: the old shards are untouched and still what the catalog
  names; the new files are unrecorded and removed by the next writer (``remove_unrecorded``);
- killed after the commit: the new shards are the truth; the old files are unrecorded, removed likewise.

The catalog's generation stays (the same ids hold the same vectors, bit for bit), so FAISS files stay
valid. Readers in this process never see the swap half done (the commit and the deletions hold the
store's exclusive lock); a reader in another process that read a slot just before the commit and then
finds its shard gone reads the slots again (``ShardGoneError``, store/directory.py).

Cost: a compaction reads and writes the live rows of the shards it picks. The automatic one (after a write
that removed items) picks only shards at least half dead (``AUTO_MIN_DEAD``), so it never copies more rows
than it frees: over an index's life it copies at most as many rows as were ever removed.
"""

from __future__ import annotations

import logging
import os
import signal
import zlib
from collections.abc import Callable
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field

import numpy as np

from crossgap_index.errors import StoreError
from crossgap_index.store import shards as shard_files  # SHARD_ROWS read at call time (tests shrink it)
from crossgap_index.store.catalog import Catalog
from crossgap_index.store.shards import ShardRecord, ShardStore, fsync_dir

DEFAULT_MIN_DEAD = 0.2  # `cgx compact`: shards at least a fifth dead
AUTO_MIN_DEAD = 0.5  # after a removal: shards at least half dead (copies no more rows than it frees)
WINDOW_ROWS = 16_384  # rows of an old shard read at once (32 MiB at d = 512 in float32)
CRASH_ENV = "CGX_TEST_COMPACT_KILL_AT"  # tests only: kill -9 this process at the named point
log = logging.getLogger("crossgap_index")


@dataclass
class CompactReport:
    """What a compaction did: shards rewritten (old file names -> new ones), rows copied, rows and bytes freed."""

    compacted: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    rows_copied: int = 0
    rows_freed: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    unrecorded_removed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ShardUse:
    """A committed shard and how many catalog rows point into it."""

    record: ShardRecord
    live: int

    @property
    def dead_fraction(self) -> float:
        return 1.0 - self.live / self.record.rows if self.record.rows else 0.0


def shard_use(catalog: Catalog) -> list[ShardUse]:
    """Every committed shard with its live row count (one pass over the items and one over derived rows)."""
    live = catalog.live_rows_per_shard(shard_files.SHARD_ROWS)
    return [ShardUse(r, live.get((r.stream, r.number), 0)) for r in catalog.shard_records()]


def remove_unrecorded(catalog: Catalog) -> list[str]:
    """Delete shard files no committed record names (an interrupted compaction's or write's leftovers).
    The caller holds the writer lock."""
    shards = catalog.shards()
    gone = shards.unrecorded(catalog.shard_records())
    for path in gone:
        path.unlink(missing_ok=True)
    if gone:
        fsync_dir(shards.directory)
    return [f"{p.parent.name}/{p.name}" for p in gone]


def compact(
    catalog: Catalog, exclusive: Callable[[], AbstractContextManager], min_dead: float = DEFAULT_MIN_DEAD
) -> CompactReport:
    """Compact every shard at least ``min_dead`` dead (0 < dead fraction; ``min_dead`` in [0, 1]). The
    caller holds the writer lock with nothing pending; ``exclusive`` keeps this process's readers out
    while the catalog swaps slots and the old files go."""
    if not 0.0 <= min_dead <= 1.0:
        raise StoreError(f"--min-dead must be between 0 and 1, not {min_dead}")
    report = CompactReport()
    if not catalog.uses_shards():
        return report
    shards = catalog.shards()
    if shards.has_pending_rows():
        raise StoreError("compaction needs the catalog committed first (rows are pending)")
    report.unrecorded_removed = remove_unrecorded(catalog)
    uses = shard_use(catalog)
    report.bytes_before = _bytes(shards, [u.record for u in uses])
    chosen = [u for u in uses if u.live < u.record.rows and u.dead_fraction >= min_dead]
    if not chosen:
        report.bytes_after = report.bytes_before
        return report
    for use in chosen:  # never copy damaged bytes into a shard with a fresh checksum
        problem = shards.verify(use.record)
        if problem:
            raise StoreError(f"cannot compact: {problem}; run `cgx check --repair` first")
    try:
        moves, written = _write_new_shards(catalog, shards, uses, chosen)
        _crash_point("written")
        _swap(catalog, shards, chosen, moves, written, exclusive)
    except BaseException:
        catalog.rollback()  # a no-op once committed: then the new shards are the truth, and an old file
        if catalog.shard_records() == [u.record for u in uses]:  # left over goes with the next writer
            with suppress(OSError):
                remove_unrecorded(catalog)  # not committed: the new files go, the old shards stay as they were
        raise
    report.compacted = [shards.path(u.record.stream, u.record.number).name for u in chosen]
    report.written = [shards.path(r.stream, r.number).name for r in written]
    report.rows_copied = sum(u.live for u in chosen)
    report.rows_freed = sum(u.record.rows - u.live for u in chosen)
    report.bytes_after = _bytes(shards, catalog.shard_records())
    return report


def _write_new_shards(
    catalog: Catalog, shards: ShardStore, uses: list[ShardUse], chosen: list[ShardUse]
) -> tuple[list[tuple[str, np.ndarray, np.ndarray]], list[ShardRecord]]:
    """The chosen shards' live rows copied into new files after each stream's highest shard: the moves
    (stream, ids, new slots) and the new shards' records."""
    highest: dict[str, int] = {}
    for use in uses:
        highest[use.record.stream] = max(highest.get(use.record.stream, -1), use.record.number)
    moves: list[tuple[str, np.ndarray, np.ndarray]] = []
    written: list[ShardRecord] = []
    for stream in sorted({u.record.stream for u in chosen}):
        mine = [u for u in chosen if u.record.stream == stream]
        live, rows = sum(u.live for u in mine), sum(u.record.rows for u in mine)
        log.info("cgx: compacting %s: %d shards, %d live rows of %d ...", stream, len(mine), live, rows)
        out = _NewShards(shards, stream, highest[stream] + 1)
        try:
            for n, use in enumerate(mine, 1):
                ids, slots = _copy_live(catalog, shards, use.record, out)
                if len(ids) != use.live:
                    raise StoreError(f"{shards.path(stream, use.record.number)}: live rows changed while compacting")
                moves.append((stream, ids, slots))
                log.info(
                    "cgx: compacted %s (%d of %d shards)", shards.path(stream, use.record.number).name, n, len(mine)
                )
            written += out.close(keep_number=any(u.record.number == highest[stream] for u in mine))
        finally:
            out.abandon()
    return moves, written


def _swap(
    catalog: Catalog,
    shards: ShardStore,
    chosen: list[ShardUse],
    moves: list[tuple[str, np.ndarray, np.ndarray]],
    written: list[ShardRecord],
    exclusive: Callable[[], AbstractContextManager],
) -> None:
    """One transaction points the rows at their new slots and swaps the shard records; then the old files go."""
    for stream, ids, slots in moves:
        catalog.move_slots(stream, ids.tolist(), slots.tolist())
    catalog.replace_shard_records([u.record for u in chosen], written)
    with exclusive():
        # the generation stays: the same ids hold the same vectors, so FAISS files stay valid
        catalog.commit_bookkeeping()
        _crash_point("committed")
        for n, use in enumerate(chosen):
            shards.forget(use.record.stream, use.record.number)
            shards.path(use.record.stream, use.record.number).unlink(missing_ok=True)
            if n == 0:
                _crash_point("deleting")
        fsync_dir(shards.directory)


def _copy_live(
    catalog: Catalog, shards: ShardStore, record: ShardRecord, out: _NewShards
) -> tuple[np.ndarray, np.ndarray]:
    """Append one shard's live rows (in slot order) to ``out``; returns their ids and new slots."""
    first = record.number * shard_files.SHARD_ROWS
    live = catalog.rows_in_slots(record.stream, first, first + record.rows)
    rows = np.array([(r[0], r[1]) for r in live], np.int64).reshape(-1, 2)
    ids, within = rows[:, 0], rows[:, 1] - first
    new_slots = np.empty(len(ids), np.int64)
    done = 0
    for start in range(0, record.rows, WINDOW_ROWS):
        end = min(start + WINDOW_ROWS, record.rows)
        pick = within[done : np.searchsorted(within, end)] - start
        if not len(pick):
            continue
        data = shards.read_window(record.stream, record.number, start, end - start)
        new_slots[done : done + len(pick)] = out.write(np.ascontiguousarray(data[pick]))
        done += len(pick)
    return ids, new_slots


class _NewShards:
    """New shard files of one stream, filled in order from ``number``, each fsynced with its crc32."""

    def __init__(self, shards: ShardStore, stream: str, number: int):
        self._shards, self._stream, self._number = shards, stream, number
        self._fd: int | None = None
        self._rows = 0
        self._crc = 0
        self._records: list[ShardRecord] = []

    def write(self, rows: np.ndarray) -> np.ndarray:
        """Append rows (stored dtype); returns their new slots."""
        slots = np.empty(len(rows), np.int64)
        done = 0
        while done < len(rows):
            if self._fd is None:
                self._open()
            take = min(len(rows) - done, shard_files.SHARD_ROWS - self._rows)
            chunk = memoryview(np.ascontiguousarray(rows[done : done + take])).cast("B")
            written = 0
            while written < len(chunk):
                written += os.write(self._fd, chunk[written:])
            self._crc = zlib.crc32(chunk, self._crc)
            slots[done : done + take] = self._number * shard_files.SHARD_ROWS + self._rows + np.arange(take)
            self._rows += take
            done += take
            _crash_point("writing")
            if self._rows == shard_files.SHARD_ROWS:
                self._finish()
        return slots

    def close(self, keep_number: bool) -> list[ShardRecord]:
        """Finish the last file; ``keep_number``: the stream's highest shard is going, so a file stays even
        when no row does (an empty shard keeps the stream's highest number from ever going down)."""
        if self._fd is None and keep_number and not self._records:
            self._open()
        if self._fd is not None:
            self._finish()
        fsync_dir(self._shards.directory)
        return self._records

    def abandon(self) -> None:
        """Close a file left open by a failure (a no-op after ``close``)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _open(self) -> None:
        path = self._shards.path(self._stream, self._number)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._rows, self._crc = 0, 0

    def _finish(self) -> None:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._records.append(ShardRecord(self._stream, self._number, self._rows, self._crc))
        self._number += 1


def _bytes(shards: ShardStore, records: list[ShardRecord]) -> int:
    total = 0
    for record in records:
        with suppress(OSError):
            total += shards.path(record.stream, record.number).stat().st_size
    return total


def _crash_point(name: str) -> None:
    """Tests only (``CGX_TEST_COMPACT_KILL_AT``): die here as kill -9 would, to prove each point is safe."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
