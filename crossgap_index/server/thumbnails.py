"""Small JPEG thumbnails of indexed images, made on the server so that every format the index holds
(TIFF, BMP, 16-bit PNG, CMYK JPEG ...) shows in any browser, and kept in a bounded in-memory cache."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Hashable

from PIL import Image

from crossgap_index.ingest.decode import decode_rgb

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


class ThumbnailCache:
    """Least-recently-used thumbnails up to ``max_bytes`` in total; safe to share between threads.

    Keys carry the file's size and mtime, so a changed file gets a new thumbnail."""

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
