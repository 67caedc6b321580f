"""Small real image files: a distinct photo per seed, a folder to index with files to skip, broken files."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

MODEL = "tiny-random"


def write_photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    """A distinct RGB picture per seed: noise plus a coloured block."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    arr[5:20, 5:25] = rng.integers(0, 256, 3, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def write_broken_files(folder: Path) -> dict[str, Path]:
    """One file for each way an image on disk can be unusable."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 90).save(buf, format="PNG")
    broken = {
        "corrupt": folder / "corrupt.jpg",
        "truncated": folder / "truncated.png",
        "empty": folder / "empty.png",
        "misnamed_text": folder / "notes.webp",
        "bomb": folder / "huge.png",
    }
    broken["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    broken["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    broken["empty"].write_bytes(b"")
    broken["misnamed_text"].write_text("this is a text file, not an image\n")
    Image.new("L", (3000, 2000)).save(broken["bomb"])  # 6 MP, over the 5 MP limit the tests use
    return broken


def make_photo_folder(root: Path) -> Path:
    """``root``/photos: six photos to index (one with an upper-case extension) beside files to skip."""
    folder = root / "photos"
    for i in range(5):
        write_photo(folder / "a" / f"img{i}.png", seed=i)
    write_photo(folder / "b" / "IMG5.JPG", seed=5)  # upper-case extension
    write_photo(folder / ".hidden" / "secret.png", seed=6)  # hidden folder: skipped
    write_photo(folder / "node_modules" / "dep.png", seed=7)  # junk folder: skipped
    (folder / "readme.txt").write_text("not an image extension, ignored")
    return folder
