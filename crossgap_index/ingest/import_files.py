"""Opening the files `cgx import` reads: what each one is, checked before a byte of it is read.

Every input is a regular file (a FIFO would hang the reader, a link to /dev/zero would feed it without
end; both are refused by ``stat`` before opening and again by ``fstat`` on the descriptor, opened
non-blocking). An ``.npy`` is read from its own header (no memory map: a file cut short while it is read
is an error here, not a SIGBUS), a JSON-lines file a bounded line at a time (ingest/jsonl.py), and a
Parquet file through a descriptor opened the same way. Anything else is one InputFileError naming the file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from crossgap_index.errors import InputFileError
from crossgap_index.ingest.discover import file_kind

MAX_JSON_FILE_BYTES = 1_000_000  # export.json
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default bound on an .npy header
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: Path, max_bytes: int | None = None, setting: str = "size") -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file (a symlink counts as its target) of at most
    ``max_bytes`` (None: any size; ``setting`` names the cap in the message)."""
    try:
        _require_regular(path, os.stat(path), max_bytes, setting)
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise InputFileError(f"cannot read {path}: no such file") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        _require_regular(path, os.fstat(fd), max_bytes, setting)  # what was opened, had the name been swapped
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(path: Path, info: os.stat_result, max_bytes: int | None, setting: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(f"cannot read {path}: not a regular file ({file_kind(info.st_mode)})")
    if max_bytes is not None and info.st_size > max_bytes:
        raise InputFileError(
            f"cannot read {path}: {info.st_size / 1e6:.0f} MB is over the {setting} limit of {max_bytes / 1e6:g} MB"
        )


@dataclass(frozen=True)
class NpyFile:
    """An N x d float32/float16 ``.npy``, known from its header; rows are read, never mapped."""

    path: Path
    rows: int
    dim: int
    dtype: np.dtype  # as stored (byte order included)
    offset: int  # where the rows start

    def read(self, start: int, count: int) -> np.ndarray:
        """Rows ``start`` .. ``start + count`` in native byte order."""
        count = max(0, min(count, self.rows - start))
        size = count * self.dim * self.dtype.itemsize
        with open_regular(self.path) as f:
            f.seek(self.offset + start * self.dim * self.dtype.itemsize)
            data = f.read(size)
        if len(data) != size:
            raise InputFileError(f"{self.path}: the file shrank while it was read (rows {start + 1}..{start + count})")
        rows = np.frombuffer(data, self.dtype).reshape(count, self.dim)
        return rows if self.dtype.isnative else rows.astype(self.dtype.newbyteorder("="))


def open_npy(path: Path) -> NpyFile:
    """The header of an ``.npy``: N x d rows of float32 or float16, C order, all there."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise InputFileError(f"{path}: an empty file, not an .npy array")
        try:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(f, max_header_size=MAX_NPY_HEADER_BYTES)
        except (ValueError, OSError, SyntaxError, TypeError) as exc:
            raise InputFileError(f"{path}: not an .npy array (its header says: {_first_line(exc)})") from exc
        offset = f.tell()
    if len(shape) != 2 or dtype.kind != "f" or dtype.itemsize not in (2, 4):
        raise InputFileError(f"{path}: needs N x d float32 or float16 rows, not {dtype} of shape {shape}")
    rows, dim = shape
    if fortran_order and rows > 1 and dim > 1:
        raise InputFileError(f"{path}: rows stored in Fortran (column) order; save it with np.ascontiguousarray")
    expected = offset + rows * dim * dtype.itemsize
    if size < expected:
        raise InputFileError(f"{path}: truncated ({size} bytes; its header promises {expected})")
    return NpyFile(path, rows, dim, dtype, offset)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:160]
