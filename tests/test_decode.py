"""Defensive decoding: every odd image mode becomes RGB, every broken file a reason."""

import io

import numpy as np
import pytest
from PIL import Image

from crossgap_index.ingest.decode import DecodeError, decode_rgb
from crossgap_index.ingest.discover import find_images
from tests.support.photos import write_broken_files


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize(
    "img,fmt",
    [
        (Image.new("L", (8, 6), 128), "PNG"),
        (Image.new("RGB", (8, 6), (10, 200, 30)).convert("P"), "PNG"),
        (Image.new("RGBA", (8, 6), (255, 0, 0, 128)), "PNG"),
        (Image.new("LA", (8, 6), (40, 255)), "PNG"),
        (Image.new("CMYK", (8, 6), (0, 255, 255, 0)), "JPEG"),
        (Image.new("RGB", (8, 6), (1, 2, 3)), "GIF"),
        (Image.new("RGB", (8, 6), (1, 2, 3)), "TIFF"),
        (Image.new("RGB", (8, 6), (1, 2, 3)), "BMP"),
        (Image.new("RGB", (8, 6), (1, 2, 3)), "WEBP"),
    ],
)
def test_modes_become_rgb(img, fmt):
    out = decode_rgb(encode(img, fmt))
    assert out.mode == "RGB"
    assert out.size == (8, 6)


def test_alpha_is_composited_on_white():
    out = decode_rgb(encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0))))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((4, 4), 65535, np.uint16)
    arr[0, 0] = 32768
    out = np.asarray(decode_rgb(encode(Image.fromarray(arr))))
    assert out[1, 1].tolist() == [255, 255, 255]
    assert 126 <= out[0, 0, 0] <= 129  # mid-grey, not saturated white


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    out = decode_rgb(encode(img, "JPEG", exif=exif.tobytes()))
    assert out.size == (10, 20)


def test_broken_files_raise_with_reasons(tmp_path):
    broken = write_broken_files(tmp_path)
    reasons = {}
    for kind, path in broken.items():
        with pytest.raises(DecodeError) as info:
            decode_rgb(path.read_bytes(), max_megapixels=5)
        reasons[kind] = str(info.value)
    assert reasons["empty"] == "empty file"
    assert "megapixels" in reasons["bomb"]
    assert reasons["misnamed_text"] == "not a recognised image format"
    assert all(reasons.values())


def test_png_named_jpg_still_decodes():
    assert decode_rgb(encode(Image.new("RGB", (5, 5)), "PNG")).size == (5, 5)


def test_discovery_skips_hidden_and_junk_folders(photo_folder):
    names = sorted(p.name for p in find_images([photo_folder]))
    assert names == ["IMG5.JPG", "img0.png", "img1.png", "img2.png", "img3.png", "img4.png"]
    with_hidden = {p.name for p in find_images([photo_folder], include_hidden=True)}
    assert "secret.png" in with_hidden
    assert "dep.png" not in with_hidden
