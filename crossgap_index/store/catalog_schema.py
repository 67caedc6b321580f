"""The catalog's SQLite schema and the checks made on its file before SQLite reads it.

Schema 2 (this one) keeps each vector in a shard file (store/shards.py) and its *slot* in the row; schema 1
kept the vector as a BLOB in the row (store/catalog_legacy.py reads it, and moves it to shards once).
Every statement lives in the catalog's modules (store/catalog*.py); the rest of the package calls methods.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from crossgap_index.errors import StoreError

CATALOG_SCHEMA_VERSION = 2  # 1: vectors as BLOBs in the rows; 2: vectors in shards, rows hold slots
DEFAULT_DTYPE = "float32"

ITEMS_TABLE = """
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
DERIVED_TABLE = """
CREATE TABLE {name} (
    kind TEXT NOT NULL,
    item_id INTEGER NOT NULL REFERENCES items (id) ON DELETE CASCADE,
    slot INTEGER NOT NULL,
    PRIMARY KEY (kind, item_id)
)"""
ITEM_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS items_image_path ON items (path) WHERE modality = 'image'",
    "CREATE UNIQUE INDEX IF NOT EXISTS items_text_hash ON items (content_hash) WHERE modality = 'text'",
    "CREATE INDEX IF NOT EXISTS items_hash ON items (content_hash)",
    "CREATE INDEX IF NOT EXISTS items_modality ON items (modality)",
)
COMMON_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS shards (stream TEXT NOT NULL, number INTEGER NOT NULL, "
    "rows INTEGER NOT NULL, crc32 INTEGER NOT NULL, PRIMARY KEY (stream, number))",
    # Files a build could not use, with the stat and read limits they failed under: an unchanged one is not
    # read again. A table of its own (made on any writable open): a reader that does not know it reads the rest.
    "CREATE TABLE IF NOT EXISTS failed_files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, "
    "mtime_ns INTEGER NOT NULL, limits TEXT NOT NULL, reason TEXT NOT NULL)",
)
INSERT_SHARD = "INSERT OR REPLACE INTO shards (stream, number, rows, crc32) VALUES (?, ?, ?, ?)"
ID_CHUNK = 900  # values per `IN (...)` query: under SQLite's limit on bound parameters (999 in older builds)
_SQLITE_MAGIC = b"SQLite format 3\x00"


def chunked(values: Sequence) -> Iterator[tuple[list, str]]:
    """``values`` in chunks of at most ID_CHUNK, each with its ``?,?,...`` placeholders for ``IN (...)``."""
    for first in range(0, len(values), ID_CHUNK):
        chunk = list(values[first : first + ID_CHUNK])
        yield chunk, ",".join("?" * len(chunk))


@functools.cache
def has_json_each() -> bool:
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


def optional_path_to_db(path: str | None) -> str | bytes | None:
    return path_to_db(path) if path is not None else None


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
