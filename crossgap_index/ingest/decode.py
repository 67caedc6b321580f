"""Defensive image decoding: whatever is on disk becomes an RGB image or a reason it cannot.

EXIF orientation is applied; grayscale, palette, alpha, 16-bit and CMYK images become RGB
(alpha composited on white); images above a pixel budget are refused before decoding.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_MEGAPIXELS = 100.0


class DecodeError(Exception):
    """The file is not a usable image; the message is the reason shown to the user."""


@dataclass(frozen=True)
class FileBytes:
    path: Path
    data: bytes
    content_hash: str
    size: int
    mtime_ns: int


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def read_file(path: Path) -> FileBytes:
    """Read a file once: its bytes, hash and stat (the stat taken before reading, for change detection)."""
    stat = path.stat()
    data = path.read_bytes()
    return FileBytes(path, data, content_hash(data), stat.st_size, stat.st_mtime_ns)


def decode_rgb(data: bytes, max_megapixels: float = DEFAULT_MAX_MEGAPIXELS) -> Image.Image:
    """Decode bytes into an RGB image, or raise DecodeError with a short reason."""
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            megapixels = img.width * img.height / 1e6
            if megapixels > max_megapixels:
                raise DecodeError(f"{megapixels:.0f} megapixels is over the {max_megapixels:g} MP limit")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except DecodeError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(_reason(exc)) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated / corrupt streams
        raise DecodeError(_reason(exc)) from exc


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
    if isinstance(exc, UnidentifiedImageError):
        return "not a recognised image format"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
