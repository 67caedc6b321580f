"""Server-side thumbnails: every format the index holds becomes a small JPEG; the cache stays bounded."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from crossgap_index.ingest.decode import DecodeError
from crossgap_index.server.thumbnails import THUMB_SIDE, ThumbnailCache, make_thumbnail


def encoded(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


PHOTO = Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 900, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "data",
    [
        encoded(PHOTO.convert("CMYK"), "TIFF"),
        encoded(PHOTO.convert("CMYK"), "JPEG"),
        encoded(Image.fromarray(np.full((600, 900), 40000, np.uint16)), "PNG"),  # 16-bit grey
        encoded(PHOTO.convert("P"), "BMP"),
        encoded(PHOTO.convert("RGBA"), "WEBP"),
    ],
    ids=["tiff-cmyk", "jpeg-cmyk", "png-16bit", "bmp-palette", "webp-alpha"],
)
def test_any_format_becomes_a_small_jpeg_keeping_the_aspect(data):
    thumb = Image.open(io.BytesIO(make_thumbnail(data, max_megapixels=10)))
    assert thumb.format == "JPEG" and thumb.mode == "RGB"
    assert thumb.size == (THUMB_SIDE, round(THUMB_SIDE * 600 / 900))


def test_small_images_are_not_enlarged_and_broken_ones_refused():
    tiny = Image.open(io.BytesIO(make_thumbnail(encoded(PHOTO.resize((64, 48)), "PNG"), 10)))
    assert tiny.size == (64, 48)
    with pytest.raises(DecodeError):
        make_thumbnail(b"not an image", 10)
    with pytest.raises(DecodeError, match="megapixels"):
        make_thumbnail(encoded(PHOTO, "PNG"), max_megapixels=0.1)


def test_cache_evicts_least_recently_used_within_its_byte_budget():
    cache = ThumbnailCache(max_bytes=10)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # now most recent
    cache.put("c", b"cccc")  # 12 bytes: the least recent ("b") goes
    assert cache.get("b") is None and cache.get("a") == b"aaaa" and cache.get("c") == b"cccc"
    cache.put("big", b"x" * 11)  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.get("big") is None and cache.get("a") == b"aaaa"
