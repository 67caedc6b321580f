"""`cgx eval` / `cgx tune` read a class-per-subfolder folder the way build-index reads images: a FIFO named
``*.png`` (which would hang them) and a ``*.png`` link to /dev/zero (which would fill memory) are left out
with a note naming them, and a file swapped for one after the listing is one line, never a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossgap_index.datasets.synthetic import export_folder
from crossgap_index.errors import InputFileError
from crossgap_index.evaluation.data import load_dataset
from tests.support.cli import REPO
from tests.support.photos import MODEL


@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    root = export_folder(tmp_path / "labelled", 3, 24)
    first, second = sorted(d for d in root.iterdir() if d.is_dir())[:2]
    (first / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(second / "pipe.png")
    return root


def test_special_files_in_class_folders_are_left_out_with_a_note(hostile_folder):
    data = load_dataset(str(hostile_folder))
    names = {p.name for p in data.images.items}
    assert "zero.png" not in names and "pipe.png" not in names and len(names) == 24
    note = next(n for n in data.notes if "left out, as build-index" in n)
    assert "zero.png (not a regular file: a character device)" in note
    assert "pipe.png (not a regular file: a FIFO)" in note


def test_a_file_swapped_for_a_fifo_after_the_listing_is_one_line(tmp_path):
    root = export_folder(tmp_path / "labelled", 3, 24)
    data = load_dataset(str(root))
    victim = data.images.items[5]
    victim.unlink()
    os.mkfifo(victim)
    with pytest.raises(InputFileError) as caught:
        data.images.read(5)
    assert str(caught.value) == f"cannot read {victim}: not a regular file (a FIFO)"


@pytest.mark.slow  # a full `cgx eval` in a fresh interpreter
def test_cgx_eval_finishes_on_a_hostile_folder_in_bounded_memory(hostile_folder):
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))"
    argv = ["cgx", "eval", str(hostile_folder), "--model", MODEL, "--device", "cpu", "--steps", "1", "--quiet"]
    code = f"{limit}; import runpy, sys; sys.argv = {argv!r}; runpy.run_module('crossgap_index', run_name='__main__')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "left out, as build-index leaves them out" in done.stdout + done.stderr


def test_fashion_mnist_files_are_regular_and_bounded(tmp_path, monkeypatch):
    import gzip

    monkeypatch.setenv("CGX_FASHION_MNIST_DIR", str(tmp_path))
    os.mkfifo(tmp_path / "t10k-images-idx3-ubyte.gz")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").symlink_to("/dev/zero")
    with pytest.raises(InputFileError) as caught:
        load_dataset("fashion-mnist:test")
    assert "t10k-images-idx3-ubyte.gz: not a regular file (a FIFO)" in str(caught.value)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as bomb:  # 70 MB of zeros in a 70 kB file
        bomb.write(bytes([0, 0, 8, 3]) + (10_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
        for _ in range(70):
            bomb.write(bytes(1_000_000))
    with pytest.raises(InputFileError) as caught:
        load_dataset("fashion-mnist:test")
    assert "unpacks to over 64,000,000 bytes" in str(caught.value)
