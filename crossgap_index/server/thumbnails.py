"""Small JPEG thumbnails of indexed images, made on the server so that every format the index holds
(TIFF, BMP, 16-bit PNG, CMYK JPEG ...) shows in any browser, and kept in a bounded in-memory cache."""

from __future__ import annotations

import io
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Hashable

from PIL import Image

from crossgap_index.ingest.decode import decode_rgb
from crossgap_index.server.files import ItemFileError, open_without_links
from crossgap_index.store.catalog import ImageRecord

THUMB_SIDE = 256  # longest side, pixels
THUMB_QUALITY = 85
CACHE_BYTES = 64 * 1024 * 1024


def make_thumbnail(data: bytes, max_megapixels: float, side: int = THUMB_SIDE) -> bytes:
    """A JPEG no larger than ``side`` on its longest side. Decoding goes through the build's decoder
    (EXIF orientation, any mode to RGB, the megapixel guard, draft-mode decoding near ``side``), so a
    thumbnail shows what was indexed; raises DecodeError for what the build would have skipped."""
    image = decode_rgb(data, max_megapixels, side)
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=THUMB_QUALITY)
    return out.getvalue()


def file_state(record: ImageRecord) -> tuple[int, int, int, int, int]:
    """The indexed file as it is now: (device, inode, size, mtime_ns, ctime_ns), opened the way ``/image`` opens
    it (no symbolic links, never blocking on a FIFO). A cached thumbnail is kept under this state, so any change
    to the file asks for a new one, made from bytes checked against the catalog's content hash: a rewrite at the
    same size moves the ctime, which no user call can set back (``touch -r`` restores the mtime only).
    Raises ItemFileError when the file is gone, not a regular file, or not the size indexed."""
    fd = open_without_links(record.path)
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ItemFileError("the indexed file is no longer a regular file")
    if info.st_size != record.size:
        raise ItemFileError("the indexed file changed since it was indexed (its size differs): re-index it")
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


class ThumbnailCache:
    """Least-recently-used thumbnails up to ``max_bytes`` in total; safe to share between threads.

    Keys carry the file's state (``file_state``), so a changed file gets a new thumbnail."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
            return data

    def put(self, key: Hashable, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= len(old) if old is not None else 0
            self._items[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)
