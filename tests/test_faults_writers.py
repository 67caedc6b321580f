"""Writers that die, wait or cannot write: check after a killed writer, check --repair on a read-only index, and the
line a waiting writer prints.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import pytest

from crossgap_index import CrossGapIndex
from crossgap_index.store.lock import IndexLock
from tests.support.cli import REPO, cgx_env
from tests.support.faults import build, cli, photos
from tests.support.pause import pause_env, wait_until_paused
from tests.support.photos import MODEL


# -- after kill -9 of a writer, check says the stale files will be rebuilt (exit 0)
@pytest.mark.slow
def test_check_after_a_killed_writer_reports_stale_files_as_rebuilt_on_next_open(tmp_path):
    photo_dir = photos(tmp_path / "photos", 60)
    index = tmp_path / "idx"
    pause, fifo = pause_env(tmp_path, "build-committed", 3)  # held after its third commit: 6 images stored
    writer = subprocess.Popen(
        [sys.executable, "-m", "crossgap_index", "build-index", str(photo_dir), "--index", str(index)]
        + ["--model", MODEL, "--device", "cpu", "--batch-size", "2", "--workers", "1"],
        cwd=REPO,
        env={**cgx_env(), **pause},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    held = wait_until_paused(writer, fifo)
    writer.kill()
    writer.wait()
    os.close(held)
    conn = sqlite3.connect(f"{(index / 'catalog.sqlite').as_uri()}?mode=ro", uri=True)
    stored = conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]
    conn.close()
    assert stored == 6, "the writer was not caught mid-build"

    checked = cli("check", "--index", index)
    assert checked.exit_code == 0, checked.output  # was: exit 1 with "problem: ... stale"
    assert "problem:" not in checked.output
    assert "image.faiss: stale" in checked.output and "will be rebuilt on next open" in checked.output
    with CrossGapIndex.open(index) as cgx:  # the next open rebuilds (and saves) them
        assert cgx.check().notes == [] and cgx.check().ok
    assert "stale" not in cli("check", "--index", index).output


# -- check --repair on a read-only index says it cannot repair
@pytest.mark.slow
def test_check_repair_on_a_read_only_index_says_it_cannot_repair(tmp_path):
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("needs unshare -m for a real read-only bind mount")
    index = tmp_path / "idx"
    build(index, photos(tmp_path / "photos", 4))
    damaged = index / "image.faiss"
    damaged.write_bytes(damaged.read_bytes()[:-16])  # truncated: a repair would rebuild it
    before = {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()}
    script = f'mount --bind -o ro "{index}" "{index}" && exec "{sys.executable}" -m crossgap_index "$@"'
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", "check", "--repair", "--index", str(index)],
        cwd=REPO,
        env=cgx_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "cannot repair" in done.stdout and "read-only" in done.stdout  # was: silent, as if it had tried
    assert "image.faiss" in done.stdout
    assert {p.name: p.read_bytes() for p in index.iterdir() if p.is_file()} == before


# -- the writer-wait line carries no logging prefix
@pytest.mark.slow
def test_waiting_for_another_writer_is_one_plain_line(tmp_path):
    index = tmp_path / "idx"
    index.mkdir()
    photo_dir = photos(tmp_path / "photos", 2)
    with IndexLock(index).hold():  # a new index: the model loads (open_clip logs via the root logger) first
        process = subprocess.Popen(
            [sys.executable, "-m", "crossgap_index", "build-index", str(photo_dir), "--index", str(index)]
            + ["--model", MODEL, "--device", "cpu", "-q"],
            cwd=REPO,
            env=cgx_env(),
            stderr=subprocess.PIPE,
            text=True,
        )
        line = process.stderr.readline()
    _, rest = process.communicate(timeout=120)
    assert line.startswith("cgx: waiting for another process writing to"), (
        line
    )  # was: "WARNING:crossgap_index:cgx: ..."
    assert process.returncode == 0, rest
