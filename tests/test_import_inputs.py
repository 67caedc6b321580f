"""Every file `cgx import` opens is checked before it is read: FIFOs and links to /dev/zero as the .npy, the
.parquet, --meta or clip-retrieval's img_emb files, files cut short or changing mid-import, hostile metadata
values: each one line naming the file, exit 1, within a bounded time and memory (never a hang)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossgap_index import CrossGapIndex
from tests.support.cli import cgx
from tests.support.photos import MODEL

pytestmark = pytest.mark.slow  # dozens of `cgx import` runs in fresh interpreters (about 30 CPU-s)

DIM = 64


def rows(n: int, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(dtype)


def table(vectors, **columns) -> pa.Table:
    return pa.table({"embedding": pa.array(list(np.asarray(vectors, np.float32)), pa.list_(pa.float32())), **columns})


def cgx_import(tmp: Path, *args) -> subprocess.CompletedProcess:
    """`cgx import` in its own process: a hang is a timeout here, not a stuck suite; memory is capped (4 GB)."""
    return cgx("import", *args, "--index", tmp / "idx", "--model", MODEL, "-q", timeout=120, memory_gb=4)


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert done.returncode == 1, done.stderr
    return lines[0]


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def zero_link(path: Path) -> Path:
    path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("maker", [fifo, zero_link], ids=["fifo", "link-to-dev-zero"])
def test_special_files_are_refused_wherever_an_import_reads(tmp_path, maker):
    np.save(tmp_path / "ok.npy", rows(3))
    kind = "a FIFO" if maker is fifo else "a character device"
    cases = {
        "emb.npy": [tmp_path / "emb.npy"],
        "emb.parquet": [tmp_path / "emb.parquet"],
        "meta.jsonl": [tmp_path / "ok.npy", "--meta", tmp_path / "meta.jsonl"],
        "meta.parquet": [tmp_path / "ok.npy", "--meta", tmp_path / "meta.parquet"],
    }
    clip = tmp_path / "clip"
    (clip / "img_emb").mkdir(parents=True)
    maker(clip / "img_emb" / "img_emb_0.npy")
    cases["clip/img_emb/img_emb_0.npy"] = [clip]
    for name, args in cases.items():
        if not (tmp_path / name).exists() and not (tmp_path / name).is_symlink():
            maker(tmp_path / name)
        line = one_line(cgx_import(tmp_path, *args))
        assert f"{tmp_path / name}: not a regular file ({kind})" in line, (name, line)


def test_files_cut_short_or_changed_are_one_line(tmp_path):
    np.save(tmp_path / "whole.npy", rows(100))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "text.npy").write_text("not numpy at all\n")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pq.write_table(table(rows(100)), tmp_path / "whole.parquet")
    raw = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    expected = {
        "cut.npy": "truncated (",
        "empty.npy": "an empty file, not an .npy array",
        "text.npy": "not an .npy array (its header says:",
        "objects.npy": "needs N x d float32 or float16 rows, not object",
        "cut.parquet": "not a readable parquet file",
    }
    for name, message in expected.items():
        line = one_line(cgx_import(tmp_path, tmp_path / name))
        assert f"{tmp_path / name}:" in line and message in line, line
        assert "allow_pickle" not in line


def test_a_source_that_shrinks_mid_import_is_one_line(tmp_path, monkeypatch):
    from crossgap_index.ingest import embeddings as e

    monkeypatch.setattr(e, "BATCH_ROWS", 10)
    np.save(tmp_path / "emb.npy", rows(100))
    size = (tmp_path / "emb.npy").stat().st_size

    def cut_after_first_batch(done: int, total: int) -> None:
        os.truncate(tmp_path / "emb.npy", size // 3)  # the reader is a batch ahead: the cut is met next read

    from crossgap_index.errors import InputFileError

    with pytest.raises(InputFileError) as caught:
        CrossGapIndex.import_embeddings(tmp_path / "emb.npy", tmp_path / "idx", MODEL, progress=cut_after_first_batch)
    assert "emb.npy: the file shrank while it was read" in str(caught.value)


def _bad_meta(tmp: Path) -> dict[str, tuple[object, str]]:
    """name -> (the metadata: a list of jsonl lines (str or bytes) or an Arrow table, the expected message)."""
    return {
        "id over 2**63": ([json.dumps({"id": 2**63})], "ids must be integers 1..9007199254740991"),
        "id a string": ([json.dumps({"id": "7"})], "found '7'"),
        "id a bool": ([json.dumps({"id": True})], "found True"),
        "path a number": ([json.dumps({"path": 5})], "a path must be a string, found 5"),
        "path with NUL": ([json.dumps({"path": "/a\u0000b.jpg"})], "a path holds a NUL character"),
        "caption a list": ([json.dumps({"caption": ["x"]})], "text must be a string, found ['x']"),
        "caption a lone surrogate": (['{"caption": "\\ud800"}'], "lone surrogate"),
        "not utf-8": ([b'{"caption": "caf\xe9"}'], "meta.jsonl:1: not UTF-8 text"),
        "deep json": (["[" * 100_000 + "]" * 100_000], "meta.jsonl:1: invalid JSON (nested too deeply)"),
        "not an object": (["[1, 2]"], "needs a JSON object, not list"),
        "long line": ([json.dumps({"caption": "x" * 2_000_000})], "a line longer than 1,000,000 bytes"),
        "bad modality": ([json.dumps({"modality": "video"})], "modality must be 'image' or 'text'"),
        "text without text": ([json.dumps({"modality": "text"})], "a text row needs its text"),
        "parquet binary not utf-8": (
            pa.table({"caption": pa.array([b"\xff\xfe"], pa.binary())}),
            "binary that is not UTF-8",
        ),
        "parquet id uint64": (pa.table({"id": pa.array([2**64 - 1], pa.uint64())}), "found 18446744073709551615"),
        "parquet path int": (pa.table({"path": pa.array([3], pa.int32())}), "a path must be a string, found 3"),
    }


@pytest.mark.parametrize("case", list(_bad_meta(Path("."))))
def test_hostile_metadata_values_are_one_line(tmp_path, case):
    content, message = _bad_meta(tmp_path)[case]
    np.save(tmp_path / "emb.npy", rows(1))
    if isinstance(content, pa.Table):
        meta = tmp_path / "meta.parquet"
        pq.write_table(content, meta)
    else:
        meta = tmp_path / "meta.jsonl"
        meta.write_bytes(
            b"".join((c if isinstance(c, bytes) else c.encode("utf-8", "surrogatepass")) + b"\n" for c in content)
        )
    line = one_line(cgx_import(tmp_path, tmp_path / "emb.npy", "--meta", meta))
    assert str(meta) in line and message in line, line


def test_parquet_embedding_columns_that_are_not_floats_are_one_line(tmp_path):
    cases = {
        "strings.parquet": (
            pa.table({"embedding": pa.array([["0.1"] * DIM], pa.list_(pa.string()))}),
            "lists of floats",
        ),
        "null-first.parquet": (
            pa.table({"embedding": pa.array([None, [0.1] * DIM], pa.list_(pa.float32()))}),
            "row 1 has no embedding",
        ),
        "scalars.parquet": (pa.table({"embedding": pa.array([0.5])}), "must hold lists of numbers"),
    }
    for name, (content, message) in cases.items():
        pq.write_table(content, tmp_path / name)
        line = one_line(cgx_import(tmp_path, tmp_path / name))
        assert f"{tmp_path / name}:" in line and message in line, line


def test_tiny_and_huge_finite_rows_are_directions_like_any_other(tmp_path):
    v = rows(4)
    v[1] *= 1e-30
    v[2] *= 1e30
    np.save(tmp_path / "emb.npy", v)
    report = CrossGapIndex.import_embeddings(tmp_path / "emb.npy", tmp_path / "idx", MODEL)
    assert report.added == 4
    unit = v.astype(np.float64) / np.linalg.norm(v.astype(np.float64), axis=1, keepdims=True)
    with CrossGapIndex.open(tmp_path / "idx", readonly=True) as cgx:
        for i in range(4):
            assert cgx.search(vector=unit[i].astype(np.float32), k=1)[0].id == i + 1
    v[3] = 0
    np.save(tmp_path / "zero.npy", v)
    line = one_line(cgx_import(tmp_path, tmp_path / "zero.npy"))
    assert "zero.npy: row 4 is all zeros or holds a value that is not finite" in line
