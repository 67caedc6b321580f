"""Reading an indexed image file for a request: only the path the catalog holds, only a regular file,
never through a symlink anywhere on its path (a folder swapped for a link since indexing would lead out
of the gallery), never more than a size cap, never blocking on a FIFO, and only while its size and
content are still those the catalog recorded."""

from __future__ import annotations

import errno
import mimetypes
import os
import stat

from crossgap_index.errors import CrossGapError
from crossgap_index.store.catalog import ImageRecord
from crossgap_index.words import content_hash

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
_FILE_FLAGS = os.O_RDONLY | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC


class ItemFileError(CrossGapError):
    """The catalog's file for an item is gone, changed, not a regular file, or too large to serve."""


def read_item_file(record: ImageRecord, max_bytes: int) -> bytes:
    """The bytes of ``record``'s file, if they are still the ones indexed (size and content hash)."""
    fd = open_without_links(record.path)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemFileError("the indexed file is no longer a regular file")
        if info.st_size > max_bytes:
            raise ItemFileError(f"the indexed file is {info.st_size} bytes, over the {max_bytes}-byte limit")
        if info.st_size != record.size:
            raise ItemFileError("the indexed file changed since it was indexed (its size differs): re-index it")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ItemFileError(f"the indexed file grew over the {max_bytes}-byte limit")
    if content_hash(data) != record.content_hash:
        raise ItemFileError("the indexed file changed since it was indexed (its content differs): re-index it")
    return data


def open_without_links(path: str) -> int:
    """A read-only descriptor for ``path`` (absolute, as the catalog stores it), opened one component at a
    time from ``/`` with O_NOFOLLOW, so that no component may be a symbolic link. Raises ItemFileError."""
    parts = path.split("/")
    if not os.path.isabs(path) or any(p in ("", ".", "..") for p in parts[1:]):
        raise ItemFileError("the indexed path is not a plain absolute path")
    if os.open not in os.supports_dir_fd:  # no openat here: compare the resolved path instead
        if os.path.realpath(path) != path:
            raise ItemFileError("the indexed file is not readable: a symbolic link is on its path")
        return _open(lambda: os.open(path, _FILE_FLAGS))
    fd = _open(lambda: os.open("/", _DIR_FLAGS))
    try:
        for name in parts[1:-1]:
            parent = fd
            fd = _open(lambda: os.open(name, _DIR_FLAGS, dir_fd=parent))  # noqa: B023 - called at once
            os.close(parent)
        parent = fd
        fd = _open(lambda: os.open(parts[-1], _FILE_FLAGS, dir_fd=parent))
        os.close(parent)
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open(opener) -> int:
    try:
        return opener()
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            reason = "a symbolic link (or a file) is where the index saw a folder or file"
        else:
            reason = exc.strerror or str(exc)
        raise ItemFileError(f"the indexed file is not readable: {reason}") from None


def media_type(path: str) -> str:
    """An image/* type from the file name, else a download type (never text/html)."""
    guessed = mimetypes.guess_type(path)[0]
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"
