"""Phone photos: HEIC (pillow-heif) and AVIF (Pillow's own plugin) decode under the same caps and EXIF
orientation as JPEG, and index, thumbnail (GET /items/N/thumb) and query like one."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from PIL import Image, features

from crossgap_index import CrossGapIndex
from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.ingest.decode import DecodeError, decode_rgb
from crossgap_index.server.settings import ServeSettings
from tests.support.serve import running_server

pillow_heif = pytest.importorskip("pillow_heif", reason="HEIC needs pillow-heif (the heif and dev extras)")
pytestmark = pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF plugin")
ORIENTATION = 0x0112


def encoded(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    """``image`` written by the plugins' own encoders (HEIF through pillow-heif, AVIF through Pillow)."""
    pillow_heif.register_heif_opener()
    exif = Image.Exif()
    if orientation is not None:
        exif[ORIENTATION] = orientation
    buf = io.BytesIO()
    image.save(buf, format=fmt, exif=exif.tobytes(), quality=95)
    return buf.getvalue()


def two_halves() -> Image.Image:
    """64 x 32: blue left half, red right half (which way it was turned is visible)."""
    image = Image.new("RGB", (64, 32), (200, 30, 30))
    image.paste((20, 40, 220), (0, 0, 32, 32))
    return image


@pytest.mark.parametrize("fmt", ["JPEG", "HEIF", "AVIF"])
def test_orientation_is_applied_alike(fmt):
    """EXIF orientation 6 (turn 90 degrees clockwise to view): every format comes out 32 x 64, blue on top."""
    rgb = decode_rgb(encoded(two_halves(), fmt, orientation=6))
    assert rgb.size == (32, 64) and rgb.mode == "RGB"
    top, bottom = rgb.getpixel((16, 8)), rgb.getpixel((16, 56))
    assert top[2] > 150 > top[0] and bottom[0] > 150 > bottom[2]


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_the_pixel_cap_holds(fmt):
    with pytest.raises(DecodeError, match="megapixels is over"):
        decode_rgb(encoded(Image.new("RGB", (1200, 1000)), fmt), max_megapixels=1.0)
    assert decode_rgb(encoded(Image.new("RGB", (1200, 1000)), fmt), min_side=64).size[1] == 64


@pytest.mark.slow  # builds an index and serves it
def test_heic_and_avif_index_thumbnail_and_query_like_a_jpeg(tmp_path):
    photos = export_folder(tmp_path / "photos", seed=5, n=12)
    source = sorted(photos.rglob("*.png"))[3]
    phone = tmp_path / "photos" / "phone"
    phone.mkdir()
    original = Image.open(source).convert("RGB")
    versions = {}
    for fmt, suffix in (("JPEG", ".jpg"), ("HEIF", ".heic"), ("AVIF", ".avif")):
        versions[suffix] = phone / f"shot{suffix}"
        versions[suffix].write_bytes(encoded(original, fmt))
    with CrossGapIndex.create(tmp_path / "index", model="crossgap-small", device="cpu") as cgx:
        report = cgx.index_folders([photos])
        assert report.skipped == [] and report.added == 15
        stored = {row.path: row.id for row in cgx.ls("image")}
        assert all(str(path) in stored for path in versions.values())
        same_photo = {str(source), *(str(p) for p in versions.values())}
        for path in versions.values():  # each version finds the four versions of the photo first
            hits = cgx.search(image=path, k=4)
            assert {h.path for h in hits} == same_photo, path
            assert hits[0].score == pytest.approx(1.0, abs=1e-3) and hits[0].path == str(path)
        with running_server(cgx, ServeSettings()) as url:
            sizes = {}
            for suffix, path in versions.items():
                thumb = httpx.get(f"{url}/items/{stored[str(path)]}/thumb", timeout=60)
                assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
                sizes[suffix] = Image.open(io.BytesIO(thumb.content)).size
            assert sizes[".heic"] == sizes[".avif"] == sizes[".jpg"] == original.size


def test_a_heic_without_the_plugin_names_what_to_install(tmp_path):
    """Pillow alone cannot open HEIC: the reason says which package reads it."""
    import subprocess
    import sys

    heic = tmp_path / "shot.heic"
    heic.write_bytes(encoded(two_halves(), "HEIF"))
    script = (
        "import sys; sys.modules['pillow_heif'] = None\n"  # as if it were not installed
        "from crossgap_index.ingest.decode import DecodeError, decode_rgb\n"
        f"try: decode_rgb(open({str(heic)!r}, 'rb').read())\n"
        "except DecodeError as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "pillow-heif" in out.stdout and "crossgap-index[heif]" in out.stdout, out.stdout + out.stderr


def test_phone_extensions_are_found(tmp_path: Path):
    from crossgap_index.ingest.discover import find_images

    for name in ("a.HEIC", "b.heif", "c.avif", "d.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in find_images([tmp_path])] == ["a.HEIC", "b.heif", "c.avif"]
