"""Reading an indexed image file for a request: only the path the catalog holds, only a regular file,
never through a symlink swapped in since indexing, never more than a size cap, never blocking on a FIFO."""

from __future__ import annotations

import mimetypes
import os
import stat

from crossgap_index.errors import CrossGapError


class ItemFileError(CrossGapError):
    """The catalog's file for an item is gone, not a regular file, or too large to serve."""


def read_item_file(path: str, max_bytes: int) -> bytes:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ItemFileError(f"the indexed file is not readable: {exc.strerror or exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ItemFileError("the indexed file is no longer a regular file")
        if info.st_size > max_bytes:
            raise ItemFileError(f"the indexed file is {info.st_size} bytes, over the {max_bytes}-byte limit")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ItemFileError(f"the indexed file grew over the {max_bytes}-byte limit")
        return data
    finally:
        os.close(fd)


def media_type(path: str) -> str:
    """An image/* type from the file name, else a download type (never text/html)."""
    guessed = mimetypes.guess_type(path)[0]
    return guessed if guessed and guessed.startswith("image/") else "application/octet-stream"
