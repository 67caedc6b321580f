"""`cgx export` when the disk fills or the file-size limit is met: one line, exit 1, no `.tmp` file left
behind, for both formats (the .npy files are written with ordinary writes: a memory-mapped file on a full
tmpfs dies of SIGBUS instead). The full disk is a real 2 MB tmpfs where this process may mount one (root),
and the file-size limit (RLIMIT_FSIZE, `ulimit -f`) a real limit on the exporting process everywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossgap_index import CrossGapIndex
from tests.support.cli import REPO
from tests.support.faults import resize
from tests.support.photos import MODEL

pytestmark = pytest.mark.slow  # a tmpfs mount and `cgx export` in fresh interpreters

DIM = 64
ROWS = 20_000  # 5 MB of float32 vectors: more than the tmpfs holds and than the file-size limit allows


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("full")
    np.save(root / "emb.npy", np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32))
    CrossGapIndex.import_embeddings(root / "emb.npy", root / "idx", MODEL, factory="Flat")
    return root / "idx"


def export(index: Path, out: Path, fmt: str, fsize: int | None = None) -> subprocess.CompletedProcess:
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize}))" if fsize else "pass"
    argv = ["cgx", "export", "--index", str(index), "--format", fmt, "--out", str(out)]
    code = f"{limit}; import runpy, sys; sys.argv = {argv!r}; runpy.run_module('crossgap_index', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def one_line_failure(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    return lines[0]


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(index, small_disk, fmt):
    resize(small_disk, "2m")
    line = one_line_failure(export(index, small_disk / "out", fmt))
    assert "disk full" in line
    assert [p.name for p in (small_disk / "out").iterdir()] == []


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_export_over_the_file_size_limit_is_one_line_and_leaves_nothing(index, tmp_path, fmt):
    out = tmp_path / "out"
    line = one_line_failure(export(index, out, fmt, fsize=1 << 20))
    assert "File too large" in line or "over the largest file this process may write" in line
    assert os.listdir(out) == []
