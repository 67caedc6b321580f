"""A FAISS build reports its phases (train on the sample, add every row, write the file), through the library
(``build_progress``) and as lines on `cgx import`'s stderr; a build with progress equals one without."""

from __future__ import annotations

import subprocess
from pathlib import Path

import faiss
import numpy as np
import pytest

from crossgap_index import CrossGapIndex, ImportProgress
from crossgap_index.store.faiss_build import build_streamed, training_size
from crossgap_index.store.vectors import VectorIndex
from tests.support.cli import cgx
from tests.support.photos import MODEL

DIM = 64  # tiny-random's embed_dim
ROWS = 3000


def _embeddings(path: Path) -> Path:
    np.save(path, np.random.default_rng(11).standard_normal((ROWS, DIM)).astype(np.float32))
    return path


def test_import_reports_train_add_write_in_order(tmp_path):
    calls: list[tuple[str, int, int]] = []
    CrossGapIndex.import_embeddings(
        _embeddings(tmp_path / "emb.npy"),
        tmp_path / "idx",
        MODEL,
        factory="IVF16,Flat",
        progress=ImportProgress(phases=lambda phase, done, total: calls.append((phase, done, total))),
    )
    image = [c for c in calls if c[2] == ROWS or c[0] == "train"]
    phases = list(dict.fromkeys(phase for phase, _, _ in image))
    assert phases == ["train", "add", "write"]
    train = [c for c in calls if c[0] == "train"]
    assert train[0][1] == 0 and train[-1][1] == train[-1][2] > 0  # the sample, from none to all of it
    added = [done for phase, done, total in calls if phase == "add" and total == ROWS]
    assert added[0] == 0 and added[-1] == ROWS and added == sorted(added)
    assert ("write", ROWS, ROWS) in calls


def test_progress_changes_nothing_in_the_built_index(tmp_path):
    rows = np.random.default_rng(2).standard_normal((ROWS, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    ids = np.arange(1, ROWS + 1, dtype=np.int64)

    def chunks():
        return ((ids[i : i + 700], rows[i : i + 700]) for i in range(0, ROWS, 700))

    built = []
    for progress in (None, lambda *_: None):
        index = VectorIndex(DIM, "IVF16,Flat")
        built.append(build_streamed(index._empty(ROWS), DIM, ROWS, chunks, progress))
    assert training_size(built[0], ROWS) == 1024  # 16 lists x 64 rows: a seeded sample, the same for both
    for index in built:
        faiss.extract_index_ivf(index).nprobe = 4
    a, b = (index.search(rows[:20], 10) for index in built)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], b[0])


def _cgx_import(embeddings: Path, index: Path, *more: str) -> subprocess.CompletedProcess:
    """`cgx import` into ``index`` as IVF16,Flat, in a fresh interpreter."""
    return cgx("import", embeddings, *more, "--index", index, "--model", MODEL, "--factory", "IVF16,Flat")


@pytest.mark.slow  # the real CLI in a fresh interpreter
def test_cgx_import_prints_the_index_phases(tmp_path):
    done = _cgx_import(_embeddings(tmp_path / "emb.npy"), tmp_path / "idx")
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    firsts = [next(i for i, line in enumerate(lines) if line.startswith(f"index: {p} ")) for p in ("train", "add")]
    assert firsts == sorted(firsts)
    assert any(line.startswith("index: add done in") for line in lines)
    assert any(line.startswith("index: write done in") for line in lines)
    quiet = _cgx_import(tmp_path / "emb.npy", tmp_path / "idx2", "-q")
    assert quiet.returncode == 0 and "index:" not in quiet.stderr
