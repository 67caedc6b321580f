"""Fashion-MNIST read from Debian's ``dataset-fashion-mnist`` package: real product photos, a world we did not make.

The package installs the four original idx files (gzip) under ``/usr/share/datasets/fashion-mnist``:
60,000 training and 10,000 test images, 28x28 grayscale, 10 balanced classes. They are parsed here with
numpy alone (the idx format is a big-endian header then raw bytes), so no downloader is needed.
``CGX_FASHION_MNIST_DIR`` points the reader at another copy of the same files.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from PIL import Image

from crossgap_index.errors import InputFileError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DIR_ENV = "CGX_FASHION_MNIST_DIR"
DEBIAN_PACKAGE = "dataset-fashion-mnist"
SPLITS = {"train": "train", "test": "t10k"}
# The label order of the original release (Xiao et al., 2017).
CLASS_NAMES: list[str] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
_IDX_TYPES = {0x08: np.uint8}


MAX_IDX_BYTES = 64_000_000  # the largest file, the train images, unpacks to 47,040,016 bytes


def data_dir() -> Path:
    """Where the idx files are read from: ``$CGX_FASHION_MNIST_DIR``, else Debian's install path."""
    override = os.environ.get(DIR_ENV)
    return Path(override).expanduser() if override else DEFAULT_DIR


def load_split(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (n, 28, 28), labels int64 (n,))`` of ``split`` ("train" or "test").

    A missing package is the expected failure on a fresh machine, so it is one line that names the
    package to install rather than a traceback from ``gzip.open``."""
    if split not in SPLITS:
        raise InputFileError(f"unknown Fashion-MNIST split '{split}': use {' or '.join(SPLITS)}")
    root = root if root is not None else data_dir()
    images_path = root / f"{SPLITS[split]}-images-idx3-ubyte.gz"
    labels_path = root / f"{SPLITS[split]}-labels-idx1-ubyte.gz"
    missing = [p.name for p in (images_path, labels_path) if not p.exists()]  # a FIFO is refused when opened
    if missing:
        raise InputFileError(
            f"Fashion-MNIST not found ({missing[0]} missing in {root}): install Debian's package "
            f"{DEBIAN_PACKAGE} (apt-get install {DEBIAN_PACKAGE}) or set {DIR_ENV} to a folder with the idx files"
        )
    images = _read_idx(images_path)
    labels = _read_idx(labels_path).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputFileError(f"{images_path} and {labels_path} do not hold matching images (n, h, w) and labels (n,)")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise InputFileError(f"{labels_path}: labels outside 0..{len(CLASS_NAMES) - 1}")
    return images, labels


def stratified_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` items, as equal a share per class as ``n`` allows, drawn with ``seed``, in file order.

    Stratified so a small subset still has every class (a random 100 of 10,000 could miss one)."""
    classes = np.unique(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    share = np.full(len(classes), n // len(classes))
    share[rng.permutation(len(classes))[: n % len(classes)]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), min(k, int((labels == c).sum())), replace=False)
        for c, k in zip(classes, share, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def to_rgb(pixels: np.ndarray) -> Image.Image:
    """One 28x28 grayscale image as the RGB PIL image every model here takes."""
    return Image.fromarray(pixels, mode="L").convert("RGB")


def _read_idx(path: Path) -> np.ndarray:
    """Parse one gzip idx file: magic (0, 0, type, ndim), ndim big-endian uint32 sizes, then the data."""
    from crossgap_index.ingest.import_files import open_regular

    try:
        with open_regular(path) as packed, gzip.open(packed, "rb") as f:
            raw = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError) as exc:
        raise InputFileError(f"cannot read {path}: {exc}") from exc
    if len(raw) > MAX_IDX_BYTES:
        raise InputFileError(f"{path}: unpacks to over {MAX_IDX_BYTES:,} bytes, more than any Fashion-MNIST file")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise InputFileError(f"{path}: not an idx file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(v) for v in np.frombuffer(raw, ">u4", ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise InputFileError(f"{path}: header says {shape} but the file holds {len(raw) - offset} bytes")
    return np.frombuffer(raw, _IDX_TYPES[raw[2]], offset=offset).reshape(shape)
