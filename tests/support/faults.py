"""Helpers of the fault tests that run the real CLI against real disks, files and processes: filling up a small
tmpfs (the ``small_disk`` fixture in conftest.py), photo folders, text corpora, and the one-line error check."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from typer.testing import CliRunner

from crossgap_index import CrossGapIndex
from crossgap_index.cli.app import app
from tests.support.photos import MODEL, write_photo

runner = CliRunner()


def cli(*args):
    """`cgx` through typer's runner, in this process."""
    return runner.invoke(app, [str(a) for a in args])


def one_line(text: str) -> str:
    """The one line a refused command printed (no traceback, no "internal error")."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and "internal error" not in text, text
    return lines[0]


def photos(folder: Path, n: int, first: int = 0) -> Path:
    for i in range(n):
        write_photo(folder / f"p{first + i:04d}.png", seed=first + i)
    return folder


def build(index: Path, folder: Path, texts: list[str] | None = None) -> None:
    with CrossGapIndex.open_or_create(index, model=MODEL, device="cpu") as cgx:
        cgx.index_folders([folder])
        if texts:
            cgx.add_texts(texts)


def corpus_lines(n: int, first: int = 0) -> list[str]:
    return [f"document number {i} about things {i * 7}" for i in range(first, first + n)]


def stored_items(index: Path, modality: str) -> int:
    """How many items of ``modality`` the catalog on disk holds, read-only and beside the library (what a
    second process would see)."""
    conn = sqlite3.connect(f"{(index / 'catalog.sqlite').as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)).fetchone()[0]
    finally:
        conn.close()


def resize(mount_point: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount_point)], check=True)


def fill(mount_point: Path, leave: int) -> Path:
    """A filler file that leaves about ``leave`` bytes free on the file system."""
    info = os.statvfs(mount_point)
    filler = mount_point / "filler"
    filler.write_bytes(b"\0" * max(0, info.f_bavail * info.f_frsize - leave))
    return filler
