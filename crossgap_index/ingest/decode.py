"""Defensive reading and decoding: whatever is on disk becomes an RGB image or a reason it cannot.

Only regular files are read (a FIFO, device or socket named ``a.png`` is skipped with a reason, a
symlink counts as its target), and never more than a size cap. Decoding is bounded by the model's
input size, not the photo's: JPEGs are decoded by libjpeg at the smallest DCT scale that still
covers the model input, other formats are reduced right after decoding. EXIF orientation is
applied; grayscale, palette, alpha, 16-bit and CMYK images become RGB (alpha composited on white);
images above a pixel budget are refused before decoding. HEIC/HEIF photos decode through pillow-heif when
it is installed (the `heif` extra), AVIF through Pillow's own plugin, under the same caps.
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError, features

from crossgap_index.ingest.discover import file_kind
from crossgap_index.ingest.limits import (
    DEFAULT_MAX_FILE_BYTES,
    DEFAULT_MAX_MEGAPIXELS,
    MAX_FILE_MB_SETTING,
    MAX_IMAGE_MEGAPIXELS_SETTING,
)
from crossgap_index.words import content_hash

__all__ = ["DEFAULT_MAX_FILE_BYTES", "DEFAULT_MAX_MEGAPIXELS", "DecodeError", "SkippedFile", "decode_rgb", "read_file"]

# Modes Image.reduce takes; the others (palette, 1-bit, 16-bit) are reduced after conversion to RGB.
_REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "RGBa", "I", "F", "CMYK", "YCbCr"})
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


# Images are decoded to at least this multiple of the model's input size, so that the model's own
# antialiased resize still does a reduction of 2x or more: embeddings then match a full-resolution
# decode to cosine >= 0.9999 (measured on crossgap-small, three 2400x1600 JPEGs; 1x gave 0.992-0.997).
DECODE_MARGIN = 2


def decode_side(input_size: int | None) -> int | None:
    """The shorter side images are decoded to for a model whose input is ``input_size`` (None: full size)."""
    return None if input_size is None else DECODE_MARGIN * input_size


class DecodeError(Exception):
    """The file is not a usable image; the message is the reason shown to the user."""


class SkippedFile(Exception):
    """The file is not read at all (not a regular file, over the size cap); the message says why."""


@dataclass(frozen=True)
class FileBytes:
    path: Path
    data: bytes
    content_hash: str
    size: int
    mtime_ns: int


def read_file(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES, setting: str = MAX_FILE_MB_SETTING) -> FileBytes:
    """Read a regular file once: its bytes, hash and stat (taken before reading, for change detection).

    Raises SkippedFile for anything that is not a regular file or is over ``max_bytes``, OSError when
    it cannot be read; ``setting`` is how the cap is named in the reason. The file is checked by
    ``stat`` before it is opened (opening some devices has effects) and again by ``fstat`` on the
    descriptor, which is opened non-blocking, so a FIFO swapped in between cannot hang the read.
    """
    _check(os.stat(path), max_bytes, setting)  # follows symlinks: a link counts as what it points to
    fd = os.open(path, _OPEN_FLAGS)
    try:
        info = os.fstat(fd)
        _check(info, max_bytes, setting)
        with open(fd, "rb", closefd=False) as file:
            data = file.read(info.st_size + 1)
    finally:
        os.close(fd)
    if len(data) > info.st_size:
        raise SkippedFile("the file grew while it was read")
    return FileBytes(path, data, content_hash(data), info.st_size, info.st_mtime_ns)


def _check(info: os.stat_result, max_bytes: int, setting: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise SkippedFile(f"not a regular file ({file_kind(info.st_mode)})")
    if info.st_size > max_bytes:
        raise SkippedFile(f"{info.st_size / 1e6:.0f} MB is over the {setting} limit of {max_bytes / 1e6:g} MB")


def decode_rgb(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS, min_side: int | None = None) -> Image.Image:
    """Decode bytes into an RGB image, or raise DecodeError with a short reason.

    ``min_side``: images larger than that on their shorter side are decoded at the smallest cheap
    scale that covers it (JPEG DCT scaling, integer box reduction) and then scaled to exactly
    ``min_side``, so memory follows the model's input size; None decodes at full resolution (the
    straightforward twin the bounded path is tested against).
    """
    if not data:
        raise DecodeError("empty file")
    if data[4:8] == b"ftyp":  # an ISO base media file (HEIF, AVIF, ...): only these need the plugin
        _register_plugins()
    try:
        # Pillow's own bomb warning (a fixed 89 MP) is left to the host's warning filters (the CLI hides it);
        # our limit is checked right after open.
        img = Image.open(io.BytesIO(data))
        megapixels = img.width * img.height / 1e6
        if megapixels > max_megapixels:
            raise DecodeError(_over_limit(megapixels, max_megapixels))
        if min_side is not None:
            _draft(img, min_side)
        img.load()
        img = ImageOps.exif_transpose(img)
        if min_side is not None and img.mode in _REDUCIBLE_MODES:
            img = _reduce(img, min_side)  # before conversion, so that never runs at full size
        rgb = _to_rgb(img)
        return _shrink(rgb, min_side) if min_side is not None else rgb
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(_bomb_reason(exc, max_megapixels)) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(_missing_plugin(data) or "not a recognised image format") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder fed hostile bytes may raise anything; one file is skipped
        raise DecodeError(_reason(exc)) from exc


# ISO base media brands (bytes 8-12 after "ftyp") of HEIF stills and of AVIF
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


@functools.cache
def _register_plugins() -> None:
    """Let Pillow open HEIC/HEIF through pillow-heif, when installed (once per process). libheif applies
    the file's rotation itself and pillow-heif then reports EXIF orientation 1, so exif_transpose below
    turns every format alike."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return
    register_heif_opener()


def _missing_plugin(data: bytes) -> str | None:
    """For a HEIF or AVIF file Pillow cannot open: what to install."""
    if data[4:8] != b"ftyp":
        return None
    brand = data[8:12]
    if brand in _AVIF_BRANDS and not features.check("avif"):
        return "AVIF needs a Pillow built with libavif (Pillow 11.3 or later from PyPI)"
    if brand in _HEIF_BRANDS:
        return "HEIC/HEIF needs pillow-heif: pip install 'crossgap-index[heif]'"
    return None


def _draft(img: Image.Image, min_side: int) -> None:
    """Ask libjpeg for the smallest DCT scale (1/2, 1/4, 1/8) whose shorter side stays >= ``min_side``."""
    if img.format != "JPEG":
        return
    scale = min_side / min(img.size)
    if scale < 1:
        img.draft(img.mode, (math.ceil(img.width * scale), math.ceil(img.height * scale)))


def _reduce(img: Image.Image, min_side: int) -> Image.Image:
    """Box-reduce by the largest integer factor that keeps the shorter side >= ``min_side``."""
    factor = min(img.size) // max(min_side, 1)
    return img.reduce(factor) if factor >= 2 else img


def _shrink(img: Image.Image, min_side: int) -> Image.Image:
    """Scale down to a shorter side of exactly ``min_side`` (box reduction first, then antialiased bicubic),
    so what a worker holds is the same size whatever the photo's resolution."""
    img = _reduce(img, min_side)
    short = min(img.size)
    if short <= min_side:
        return img
    w, h = img.size
    size = (min_side, max(1, round(h * min_side / w))) if w <= h else (max(1, round(w * min_side / h)), min_side)
    return img.resize(size, Image.Resampling.BICUBIC)


def _over_limit(megapixels: float, max_megapixels: float) -> str:
    return f"{megapixels:.0f} megapixels is over the {MAX_IMAGE_MEGAPIXELS_SETTING} limit of {max_megapixels:g}"


def _bomb_reason(exc: Image.DecompressionBombError, max_megapixels: float) -> str:
    """Pillow refuses images over twice its MAX_IMAGE_PIXELS before we see their size: say it in our terms."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    megapixels = int(found.group(1)) / 1e6 if found else float("nan")
    if megapixels > max_megapixels or not found:
        return _over_limit(megapixels, max_megapixels)
    hard_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6
    return (
        f"{megapixels:.0f} megapixels is over Pillow's hard limit of {hard_limit:.0f} "
        f"(Image.MAX_IMAGE_PIXELS), which {MAX_IMAGE_MEGAPIXELS_SETTING} cannot raise"
    )


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
