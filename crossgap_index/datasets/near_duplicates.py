"""Planted near-duplicates: copies of photos as a library's duplicates usually are (resized, re-encoded as JPEG,
slightly cropped), for measuring and testing duplicate finding (search/duplicates.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image

# name -> how a copy is made from the original (an RGB image)
VARIANTS = {
    "resized": lambda image: image.resize((max(1, image.width * 3 // 5), max(1, image.height * 3 // 5))),
    "jpeg": lambda image: image,  # the same pixels, written as JPEG at quality 60
    "cropped": lambda image: image.crop(
        (image.width // 32, image.height // 32, image.width - image.width // 32, image.height - image.height // 32)
    ),
}
JPEG_QUALITY = 75  # Pillow's default, what most re-encoding tools write


def plant_near_duplicates(sources: Sequence[Path], out_dir: Path) -> list[list[Path]]:
    """For each source photo, one copy per VARIANT under ``out_dir/<n>/``; returns each group (source first)."""
    groups = []
    for n, source in enumerate(sources):
        folder = Path(out_dir) / f"{n:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        with Image.open(source) as opened:
            image = opened.convert("RGB")
        group = [Path(source)]
        for name, make in VARIANTS.items():
            copy = make(image)
            path = folder / (f"{name}.jpg" if name == "jpeg" else f"{name}.png")
            copy.save(path, **({"quality": JPEG_QUALITY} if name == "jpeg" else {}))
            group.append(path)
        groups.append(group)
    return groups
