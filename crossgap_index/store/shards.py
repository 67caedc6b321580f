"""Append-only vector shards: an index's vectors, apart from the catalog, read with pread per run of rows.

    vectors/items-000000.f32       the items' vectors (images and texts share one id space, one stream)
    vectors/image-oti-000000.f32   one stream per derived collection (``.f16`` when stored as float16)

A vector's place is its *slot*: shard ``slot // SHARD_ROWS``, row ``slot % SHARD_ROWS``. Slots are handed
out in append order and never reused (a removed item's row stays as dead bytes until compaction,
store/compact.py, copies a shard's live rows into a new shard with a higher number and deletes the old file:
shard numbers only grow, so a number once deleted never names other bytes). What is committed is
what the catalog's ``shards`` table says, per shard: rows and the crc32 of those rows' bytes, committed
in the same SQLite transaction as the catalog rows that point into it. The writer (one, under the index
lock) writes pending rows at the end of the committed bytes, fsyncs, and only then lets the catalog
commit: a row becomes visible only when its vector is durable. Bytes past the committed length (a writer
killed between its fsync and its commit) are dead and cut off by the next writer.

Opening checks each shard's size (a cheap stat; a shorter file is refused in one line); its checksum is
checked by ``cgx check``, before any full read that feeds a FAISS rebuild, and once per process per
shard prefix (``verify``).
"""

from __future__ import annotations

import os
import re
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from crossgap_index.errors import StoreError

T = TypeVar("T")

SHARD_ROWS = 1 << 18  # 262,144 rows: 256 MiB per shard at d=512 in float16, 512 MiB in float32
VECTORS_DIR = "vectors"
ITEMS_STREAM = "items"
DTYPES = {"float32": ("f32", np.float32), "float16": ("f16", np.float16)}
_VERIFY_BLOCK = 64 << 20  # bytes per crc32 step: the whole shard is never one Python bytes object
SHARD_GONE_RETRIES = 3  # reads again of slots that a compaction in another process moved meanwhile
READ_RUN_ROWS = 1  # gathers of at least this many rows per shard use pread; fewer (tests: all) the memory map


class ShardGoneError(StoreError):
    """A shard file the caller's slots pointed into is gone: a compaction in another process moved its rows
    (and committed) after the caller read the slots; reading the slots again finds them."""


def read_again_if_moved(read: Callable[[], T]) -> T:
    """``read()`` (slots from the catalog, then their shard rows), run again up to SHARD_GONE_RETRIES times
    while a compaction in another process moves the rows between the two steps."""
    for _ in range(SHARD_GONE_RETRIES):
        try:
            return read()
        except ShardGoneError:
            continue
    return read()


@dataclass(frozen=True)
class ShardRecord:
    """One shard as committed: ``rows`` vectors whose bytes have this crc32."""

    stream: str
    number: int
    rows: int
    crc32: int


@dataclass
class _Pending:
    start: int  # slot of the first pending row
    arrays: list[np.ndarray] = field(default_factory=list)
    rows: int = 0


class ShardStore:
    """The shard files of one index directory: pending appends of the writer, row reads for readers.

    Thread-safe for readers; appends come from the one writing thread."""

    def __init__(self, directory: Path, dim: int, dtype: str):
        if dtype not in DTYPES:
            raise StoreError(f"unknown vector dtype '{dtype}': use one of {', '.join(DTYPES)}")
        self.directory = directory
        self.dim = dim
        self.dtype = dtype
        self._ext, self._np = DTYPES[dtype]
        self.row_bytes = dim * np.dtype(self._np).itemsize
        self._maps: dict[tuple[str, int], np.memmap] = {}
        self._maps_lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._verified: dict[tuple[str, int], tuple[int, int]] = {}  # shard -> (rows, crc32) checked here

    @property
    def numpy_dtype(self) -> type:
        return self._np

    def forget(self, stream: str, number: int) -> None:
        """Drop what this process knows of a shard (its map, its verified prefix): it was replaced."""
        with self._maps_lock:
            self._maps.pop((stream, number), None)
        self._verified.pop((stream, number), None)

    def path(self, stream: str, number: int) -> Path:
        return self.directory / f"{stream}-{number:06d}.{self._ext}"

    def unrecorded(self, records: list[ShardRecord]) -> list[Path]:
        """Shard-named files (and their ``.tmp`` siblings) no committed record points at: new shards of a
        compaction killed before its commit, old ones of one killed after it, a repair's leftover. Only a
        writer holding the lock may delete them (another writer's uncommitted shard would look the same)."""
        if not self.directory.is_dir():
            return []
        named = re.compile(rf"^[\w.-]+-\d{{6}}\.{self._ext}(\.tmp)?$")
        recorded = {self.path(r.stream, r.number).name for r in records}
        return sorted(p for p in self.directory.iterdir() if named.match(p.name) and p.name not in recorded)

    # -- writes ---------------------------------------------------------------------------
    def append(self, stream: str, vectors: np.ndarray, next_slot: int) -> int:
        """Queue rows for the next flush; returns the first one's slot. ``next_slot``: the stream's first
        free slot as committed (asked only for the first append of a transaction)."""
        vectors = np.asarray(vectors).reshape(-1, self.dim)
        if vectors.dtype != self._np:
            vectors = vectors.astype(np.float32, copy=False)
        pending = self._pending.get(stream)
        if pending is None:
            pending = self._pending[stream] = _Pending(next_slot)
        slot = pending.start + pending.rows
        pending.arrays.append(vectors.astype(self._np))  # a copy: the caller may reuse its array
        pending.rows += len(vectors)
        return slot

    def has_pending(self, stream: str) -> bool:
        return stream in self._pending

    def has_pending_rows(self) -> bool:
        """Whether any stream has rows queued for the next flush."""
        return bool(self._pending)

    def discard(self) -> None:
        """Forget rows not flushed yet (the transaction they belonged to rolled back)."""
        self._pending.clear()

    def flush(self, committed: dict[tuple[str, int], tuple[int, int]]) -> list[ShardRecord]:
        """Write every pending row after its shard's committed bytes, fsync, and return the shards' new
        records for the catalog to commit. ``committed``: (stream, number) -> (rows, crc32)."""
        records: list[ShardRecord] = []
        pending, self._pending = self._pending, {}
        for stream, queued in pending.items():
            data = np.concatenate(queued.arrays) if len(queued.arrays) > 1 else queued.arrays[0]
            slot, done = queued.start, 0
            while done < len(data):
                number, row = divmod(slot, SHARD_ROWS)
                take = min(len(data) - done, SHARD_ROWS - row)
                rows, crc = committed.get((stream, number), (0, 0))
                if rows != row:
                    raise StoreError(f"{self.path(stream, number)}: appending at row {row}, the catalog has {rows}")
                chunk = memoryview(np.ascontiguousarray(data[done : done + take])).cast("B")  # no copy
                self._write_at(self.path(stream, number), rows * self.row_bytes, chunk)
                record = ShardRecord(stream, number, rows + take, zlib.crc32(chunk, crc))
                committed[(stream, number)] = (record.rows, record.crc32)
                records.append(record)
                slot, done = slot + take, done + take
        return records

    def _write_at(self, path: Path, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset`` (the committed length), cutting off any dead tail, and fsync."""
        if not self.directory.is_dir():
            self.directory.mkdir()
            fsync_dir(self.directory.parent)
        new = not path.exists()
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                raise StoreError(_short(path, size, offset))
            if size != offset:
                os.ftruncate(fd, offset)
            written = os.pwrite(fd, data, offset)
            while written < len(data):
                written += os.pwrite(fd, data[written:], offset + written)
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:
            fsync_dir(self.directory)

    # -- reads ----------------------------------------------------------------------------
    def gather(self, stream: str, slots: np.ndarray) -> np.ndarray:
        """float32 vectors of ``slots`` in their order (pending rows of this writer included)."""
        slots = np.asarray(slots, np.int64)
        out = np.empty((len(slots), self.dim), np.float32)
        if not len(slots):
            return out
        pending = self._pending.get(stream)
        in_file = slots < pending.start if pending is not None else np.ones(len(slots), bool)
        if not in_file.all():
            queued = np.concatenate(pending.arrays)
            out[~in_file] = queued[slots[~in_file] - pending.start]
        numbers = slots // SHARD_ROWS
        for number in np.unique(numbers[in_file]):
            rows = np.flatnonzero(in_file & (numbers == number))
            within = slots[rows] - number * SHARD_ROWS
            if len(rows) < READ_RUN_ROWS:  # the twin: fancy indexing into the shard's memory map
                out[rows] = self._map(stream, int(number), int(within.max()) + 1)[within]
                continue
            order = np.argsort(within, kind="stable")
            ordered = within[order]
            runs = np.split(np.arange(len(order)), np.flatnonzero(np.diff(ordered) != 1) + 1)
            path = self.path(stream, int(number))
            try:
                with path.open("rb", buffering=0) as f:
                    for run in runs:
                        out[rows[order[run]]] = self._read_run(f.fileno(), path, int(ordered[run[0]]), len(run))
            except FileNotFoundError as exc:
                raise ShardGoneError(f"{path}: vector shard missing ({exc.strerror or exc})") from exc
            except OSError as exc:
                raise StoreError(f"{path}: cannot read a vector shard ({exc.strerror or exc})") from exc
        return out

    def _read_run(self, fd: int, path: Path, first: int, count: int) -> np.ndarray:
        """Consecutive rows with one pread. Reads rather than a memory map: mapped pages (and the kernel's
        fault-around neighbours of every re-scored row) would pile up in this process's resident set."""
        want = count * self.row_bytes
        data = os.pread(fd, want, first * self.row_bytes)
        if len(data) < want:
            raise StoreError(_short(path, first * self.row_bytes + len(data), (first + count) * self.row_bytes))
        return np.frombuffer(data, self._np).reshape(count, self.dim)

    def _map(self, stream: str, number: int, need: int) -> np.memmap:
        """The shard's memory map, covering at least ``need`` rows (mapped again as the shard grows)."""
        key = (stream, number)
        with self._maps_lock:
            mapped = self._maps.get(key)
            if mapped is None or len(mapped) < need:
                path = self.path(stream, number)
                try:
                    size = path.stat().st_size
                except FileNotFoundError as exc:
                    raise ShardGoneError(f"{path}: vector shard missing ({exc.strerror or exc})") from exc
                except OSError as exc:
                    raise StoreError(f"{path}: cannot read a vector shard ({exc.strerror or exc})") from exc
                rows = min(size // self.row_bytes, SHARD_ROWS)
                if rows < need:
                    raise StoreError(_short(path, size, need * self.row_bytes))
                mapped = np.memmap(path, self._np, "r", shape=(rows, self.dim))
                self._maps[key] = mapped
            return mapped

    def read_window(self, stream: str, number: int, first: int, count: int) -> np.ndarray:
        """Rows ``first``..``first + count`` of one shard as stored (float16 stays float16), one pread:
        compaction copies bytes, never converts them."""
        path = self.path(stream, number)
        try:
            with path.open("rb", buffering=0) as f:
                return self._read_run(f.fileno(), path, first, count)
        except OSError as exc:
            raise StoreError(f"{path}: cannot read a vector shard ({exc.strerror or exc})") from exc

    def close(self) -> None:
        with self._maps_lock:
            self._maps.clear()

    # -- verification ---------------------------------------------------------------------
    def size_problem(self, record: ShardRecord) -> str | None:
        """A shard shorter than its committed rows (cheap: one stat). Longer is fine: a dead tail."""
        path = self.path(record.stream, record.number)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return f"{_name(path)}: missing (the catalog records {record.rows} vectors in it)"
        except OSError as exc:
            return f"{_name(path)}: unreadable ({exc.strerror or exc})"
        want = record.rows * self.row_bytes
        return None if size >= want else _short(path, size, want, named=True)

    def verify(self, record: ShardRecord) -> str | None:
        """Size, then the crc32 of the committed bytes (only the part not yet verified in this process)."""
        problem = self.size_problem(record)
        if problem:
            return problem
        key = (record.stream, record.number)
        done_rows, crc = self._verified.get(key, (0, 0))
        if done_rows > record.rows:
            done_rows, crc = 0, 0
        path = self.path(record.stream, record.number)
        try:
            with path.open("rb") as f:
                f.seek(done_rows * self.row_bytes)
                left = (record.rows - done_rows) * self.row_bytes
                while left:
                    block = f.read(min(left, _VERIFY_BLOCK))
                    if not block:
                        break
                    crc = zlib.crc32(block, crc)
                    left -= len(block)
        except OSError as exc:
            return f"{_name(path)}: unreadable ({exc.strerror or exc})"
        if crc != record.crc32:
            self._verified.pop(key, None)
            return f"{_name(path)}: checksum differs from the catalog's record (damaged)"
        self._verified[key] = (record.rows, crc)
        return None


def _name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def _short(path: Path, size: int, want: int, named: bool = False) -> str:
    what = _name(path) if named else str(path)
    return f"{what}: truncated ({size} bytes, the catalog records {want})"


def fsync_dir(directory: Path) -> None:
    """Make a new file's directory entry durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
